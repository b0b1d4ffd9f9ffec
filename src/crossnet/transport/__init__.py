"""Per-peer transports of `backend: auto`: the probe primitive (`probe`), the pure
choice of a peer's transport (`select`), the agent's prober thread (`prober`) and the
connections table of `crossnet status` (`connections`). See docs/transport.md."""
