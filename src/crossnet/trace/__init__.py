"""`crossnet trace SRC DST`: the path a packet from container SRC to DST takes, hop by
hop, from kernel state — and with `verify`, evidence that it really went that way.

How the path is found (every decision is the kernel's own answer, read with pyroute2):

    container netns   route get DST                  -> out dev, next hop, neighbour MAC
    veth              container side -> host side     (the container's record: host_if)
    bridge            FDB lookup of the next-hop MAC  -> own address (routed) | a port | flood
    host routing      route get DST iif <bridge>      -> vxlan device | OVS port | NIC
    vxlan             neighbour + FDB on the device   -> VTEP, vni, port; underlay route
    OVS               ofproto/trace (crossnet.trace.ovs, pluggable)
    NIC               underlay route + neighbour
    peer host         NIC rx -> decap -> route -> bridge FDB -> destination veth

The walk is generic (it follows device kinds, not backend names), so it covers bridge,
host-gw, vxlan and anything built from the same parts. Every namespace is read through
a `View`; `KernelView` is the real one, unit tests use `FakeView` with plain data.

Verification (`verify=True`): counters of every link in every namespace involved are
read before and after a bounded ping (COUNT echo requests from SRC's namespace), and
AF_PACKET taps on the underlay NICs count the probe packets by encapsulation (vxlan,
gre, plain). A hop with an expected direction ("tx" / "rx") "moved" when its counter in
that direction grew by at least the number of requests sent; a hop that did not move
is flagged.

The package: `model` (what is read and what is reported), `views` (kernel and fake
namespace views), `walker` (the hop walk), `verify` (probe, taps, counters), `run`
(`trace`, `trace_hosts`), `ovs` (the OVS step, handed to `trace_hosts` by the CLI).
Empty of code on purpose: importing the package costs nothing.
"""
