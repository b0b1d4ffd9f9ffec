"""`crossnet trace SRC DST`: the hop-by-hop path of a packet between containers, from
kernel state; `--verify` proves it with counters. `crossnet lab trace` (crossnet.cli.lab)
shares the options and the output."""

from __future__ import annotations

import sys

import click

from crossnet.errors import ConfigError

OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="text for people, json for scripts.")
VERIFY = click.option("--verify", is_flag=True,
                      help="Send COUNT pings from SRC and show every hop's counter deltas; flag hops that did not move.")
COUNT = click.option("--count", type=int, default=20, show_default=True, help="Echo requests sent by --verify (1-1000).")


def _check_count(count: int) -> None:
    if not 1 <= count <= 1000:
        raise ConfigError(f"--count: must be between 1 and 1000, got {count}")


def _fmt_delta(v: int | None) -> str:
    return "-" if v is None else f"+{v}"


def render_text(res: dict) -> str:
    """Human output of TraceResult.to_json()."""
    lines = []
    src_where = f"{res['src_address']}" + (f" on {res['src_host']}" if res.get("src_host") else "")
    dst_where = f"{res['dst_address']}" + (f" on {res['dst_host']}" if res.get("dst_host") else "")
    src = res["src"] if res["src"] == res["src_address"] else f"{res['src']} ({src_where})"
    dst = res["dst"] if res["dst"] == res["dst_address"] else f"{res['dst']} ({dst_where})"
    tunnel = f"tunnel {res['tunnel']}" if res.get("tunnel") else "no tunnel"
    transport = f", transport {res['transport']}" if res.get("transport") else ""
    if res.get("peer"):  # backend auto: what crossnet records for the destination's peer
        transport += f" (recorded for peer {res['peer']}: {res['recorded_transport']})"
    lines.append(f"trace {src} → {dst}: backend {res['backend']}{transport}, {tunnel}")
    hops = res["hops"]
    w_where = max([len(_where(h)) for h in hops] + [4])
    w_dev = max([len(h["device"] or "-") for h in hops] + [6])
    w_kind = max([len(h["kind"]) for h in hops] + [4])
    for i, h in enumerate(hops, 1):
        head = f"{i:>3}. {_where(h):<{w_where}}  {h['device'] or '-':<{w_dev}}  {h['kind']:<{w_kind}}  {h['detail']}"
        lines.append(head)
        pad = " " * (5 + w_where + 2 + w_dev + 2 + w_kind + 2)
        if h.get("tx_delta") is not None or h.get("rx_delta") is not None:
            mark = {True: "✓ moved", False: "✗ NOT MOVED", None: ""}[h.get("moved")]
            exp = f" (expect {h['expect']})" if h.get("expect") else ""
            lines.append(f"{pad}counters tx {_fmt_delta(h.get('tx_delta'))} rx {_fmt_delta(h.get('rx_delta'))}{exp} {mark}".rstrip())
        cap = h.get("capture")
        if cap:
            if cap.get("error"):
                lines.append(f"{pad}capture: {cap['error']}")
            else:
                wg = f", wireguard datagrams {cap['wireguard']}" if "wireguard" in cap else ""
                lines.append(f"{pad}probe packets seen here: vxlan {cap.get('vxlan', 0)}, gre {cap.get('gre', 0)}, "
                             f"plain {cap.get('plain', 0)}{wg}")
        x = h.get("extra") or {}
        if "tx_bytes_delta" in x:
            lines.append(f"{pad}wireguard peer {x.get('peer')}: tx +{x['tx_bytes_delta']} B, "
                         f"rx +{x['rx_bytes_delta']} B during the probe")
        if h.get("note"):
            lines.append(f"{pad}! {h['note']}")
    probe = res.get("probe")
    if probe:
        lines.append(f"probe: {probe.get('sent', 0)} echo requests, {probe.get('received', 0)} replies"
                     + (f" ({probe['error']})" if probe.get("error") else ""))
        scope = f" (as far as visible here: the rest is on {res['handoff']})" if res.get("handoff") else ""
        if res["verified"]:
            lines.append(f"verified: every hop's counter moved by at least the number of requests sent{scope}")
        else:
            bad = ", ".join(str(i) for i in res.get("flagged") or [])
            if bad:
                why = f"hop(s) {bad} did not carry the probe"
            elif not probe.get("received"):
                why = "no reply to the probe"
            elif not res.get("complete") and not res.get("handoff"):
                why = "the path could not be followed to the destination"
            else:
                why = "no hop with a counter"
            lines.append(f"NOT verified: {why}")
    for w in res.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _where(h: dict) -> str:
    return f"{h['host']}/{h['netns']}" if h.get("netns") else str(h["host"])


def _emit(result, output: str, verify: bool) -> None:
    data = result.to_json()
    if output == "json":
        from crossnet.cli.contract import emit

        emit(data)
    else:
        click.echo(render_text(data))
    if verify and not result.verified:
        sys.exit(1)


@click.command("trace")
@click.argument("src")
@click.argument("dst")
@VERIFY
@COUNT
@click.option("--peer-state-dir", type=click.Path(file_okay=False), help="State dir of the destination host (to follow the packet there).")
@click.option("--peer-netns", help="Network namespace of the destination host (with --peer-state-dir).")
@click.option("--peer-ovs-rundir", type=click.Path(file_okay=False),
              help="OVS backends: the destination host's Open vSwitch run directory (holding db.sock); "
                   "default: the one recorded in its state dir by `crossnet apply`. Never guessed.")
@OUTPUT
@click.pass_context
def trace_cmd(ctx: click.Context, src: str, dst: str, verify: bool, count: int, peer_state_dir: str | None,
              peer_netns: str | None, peer_ovs_rundir: str | None, output: str) -> None:
    """Explain hop by hop how a packet goes from container SRC to DST.

    SRC is a container on this host (id or netns name, as `crossnet status` shows);
    DST a container (on this host, or on the peer given by --peer-state-dir) or an
    IPv4 address. Each hop names the device and the kernel state that decided it
    (route, neighbour, FDB entry, vxlan encapsulation, OVS flow). With --verify,
    COUNT pings are sent from SRC and every hop shows its tx/rx counter deltas;
    underlay NICs also count the probe packets by encapsulation (vxlan/gre/plain).
    Exit 1 when --verify finds a hop whose counter did not move.
    """
    from crossnet.trace import ovs as trace_ovs
    from crossnet.state import StateDir
    from crossnet.trace.run import trace_hosts

    _check_count(count)
    if bool(peer_state_dir) != bool(peer_netns):
        raise ConfigError("--peer-state-dir and --peer-netns go together (the destination host's state and namespace)")
    if peer_ovs_rundir and not peer_state_dir:
        raise ConfigError("--peer-ovs-rundir: goes with --peer-state-dir and --peer-netns (the destination host)")
    states: list[tuple] = [(StateDir(ctx.obj["state_dir"]), None)]
    if peer_state_dir:
        states.append((StateDir(peer_state_dir), peer_netns, peer_ovs_rundir))
    result = trace_hosts(src, dst, states, verify=verify, count=count, make_ovs=trace_ovs.make_tracer)
    _emit(result, output, verify)


def register(main: click.Group) -> None:
    main.add_command(trace_cmd)
