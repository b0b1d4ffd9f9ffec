"""Transport between hosts: the probe primitive and path-MTU discovery (`probe`), what
apply/status do with the measurements (`pmtu`), and the per-peer transports of
`backend: auto` — the pure choice of a peer's transport (`select`), the agent's prober
thread (`prober`) and the connections table of `crossnet status` (`connections`). See
docs/transport.md and docs/mtu.md."""
