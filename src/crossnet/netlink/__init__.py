"""The kernel's network stack, spoken to directly: rtnetlink constants declared once
(`const`), the one setns helper (`ns`), thin pyroute2 helpers (`iproute`), the two
hand-packed rtnetlink hot paths (`batch`, `raw`) and gratuitous ARP on a raw packet
socket (`garp`). Empty on purpose: importing the package costs nothing; each
submodule is imported where it is needed (pyroute2 only through `iproute`)."""
