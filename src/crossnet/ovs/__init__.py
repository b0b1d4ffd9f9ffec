"""Open vSwitch support: OVSDB access (db), private daemons for the lab (daemon),
resources the ovs-gre / ovs-vxlan backends produce (resources), lab service (lab)."""
