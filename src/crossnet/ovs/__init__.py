"""Open vSwitch support: OVSDB access (db) and the resources the ovs-gre / ovs-vxlan
backends produce (resources). The lab's private daemons live in crossnet.lab.ovsdaemon."""
