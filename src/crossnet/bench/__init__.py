"""`crossnet bench`: measure crossnet against the physical limit and against what
users would build by hand, in the same run (absolute numbers drift on shared
machines; ratios to a baseline measured minutes apart hold).

Modules:

- ``util``      statistics, bounded subprocesses with per-process peak RSS (wait4),
                machine facts, unique lab names, result records, skips
- ``traffic``   iperf3 TCP throughput and ping RTT between two namespaces
- ``manual``    the tutorial's hand-built layouts (Linux bridge + routes; bridge holding
                the NIC; kernel VXLAN; OVS netdev bridge + GRE port + Linux bridge),
                built step by step with ip/ovs-vsctl
- ``dataplane`` suite: per backend a 4-host lab: container h1 → h2 (crossnet) vs host
                h3 → h4 (never configured: the underlay), and its hand-built twin in a
                second lab up at the same time, all three interleaved round by round
- ``worker``    runs *inside* a lab host namespace: in-process attach loops, CNI calls
- ``control``   suite: attach latency, N-peer apply, CNI ADD, podman run, agent, mesh
- ``agentbench``/``meshbench``  the etcd agent's and `crossnet launch`'s labs (join latency, footprint)
- ``targets``   the issue's performance targets, evaluated on a result
- ``report``    docs/benchmarks.md + plots in docs/img/

Every lab is named ``b`` + 7 random characters and torn down in ``finally``.
"""

# the parts of the control suite, as `bench control --only` names them (podman: and docker;
# agent: and container DNS; attach and cni: with their `datapath: ebpf` rows); here, not in
# ``control``, so that the CLI lists them without importing the suite
CONTROL_PARTS = ("attach", "peers", "cni", "podman", "agent", "mesh")
