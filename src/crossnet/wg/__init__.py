"""WireGuard support for the wireguard backend: keys (crossnet.wg.keys), the UAPI text
protocol (crossnet.wg.uapi), the wireguard-go process (crossnet.wg.proc), one control
interface over the kernel module (pyroute2 genetlink) or wireguard-go's UAPI socket
(crossnet.wg.control) and the reconciler resources (crossnet.wg.resources)."""
