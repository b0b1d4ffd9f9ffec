"""The text of `check` / `lab check` / `lab demo`, readable for 20+ containers: a matrix
whose column headers are numbers (never names truncated into the same `cnlab-…`) once
there are more than WIDE columns, and failures grouped per host ("h3: unreachable from
every host (16 pairs)") instead of one line per pair, each error one short line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

WIDE = 8  # more destinations than this: numbered columns, a legend below
MAX_LINES = 10  # failure lines shown; the rest counted
MAX_ERROR = 70  # characters of a probe's error text


def short_error(error: str | None) -> str:
    """A probe's error as one short line (ping's raw output is several lines)."""
    if not error:
        return "unreachable"
    lines = [" ".join(x.split()) for x in str(error).splitlines() if x.strip()]
    text = next((x for x in lines if "packets transmitted" in x or "unreachable" in x.lower()), lines[0] if lines else "")
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def _cell(p: Any) -> str:
    if p is None:
        return "[dim]·[/dim]"
    if p.ok:
        return f"[green]{p.rtt_ms:.2f}[/green]" if p.rtt_ms is not None else "[green]✓[/green]"
    return "[bold red]✗[/bold red]"


def matrix(pairs: Sequence[Any], dsts: Sequence[str] | None = None, title: str | None = None,
           caption: str = "RTT in ms; ✗ = unreachable", label: Callable[[str], str] = str):
    """A rich Table: rows = sources, columns = `dsts` (default: every endpoint). Above
    WIDE columns the headers are numbers; sources that are also destinations carry their
    number, and the caption says which number is which."""
    from rich.table import Table

    names: list[str] = []
    for p in pairs:
        for n in (p.src, p.dst):
            if n not in names:
                names.append(n)
    cols = list(dsts) if dsts is not None else names
    srcs = list(dict.fromkeys(p.src for p in pairs))
    numbered = len(cols) > WIDE
    num = {n: str(i) for i, n in enumerate(cols, 1)}
    cell = {(p.src, p.dst): p for p in pairs}
    if not numbered:
        table = Table(title=title, caption=caption, caption_justify="left")
        table.add_column("src \\ dst", style="bold", no_wrap=True)
        for n in cols:
            table.add_column(label(n), justify="right", no_wrap=True)
        for s in srcs:
            table.add_row(label(s), *(_cell(None if s == d else cell.get((s, d))) for d in cols))
        return table
    # wide: one character per cell (✓ ✗ ·), numbered columns, the RTTs summed up in the caption
    from rich import box

    rtts = sorted(p.rtt_ms for p in pairs if p.ok and p.rtt_ms is not None)
    extra = caption.replace("RTT in ms; ✗ = unreachable", "").lstrip("; ")  # e.g. check's "NAME (gateway)" note
    caption = "✓ reachable; ✗ = unreachable" + (
        f"; RTT median {rtts[len(rtts) // 2]:.2f} ms, max {rtts[-1]:.2f} ms" if rtts else "") + (
        f"; {extra}" if extra else "")
    caption += "; columns: " + " ".join(f"{num[n]}={label(n)}" for n in cols)
    table = Table(title=title, caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1),
                  pad_edge=False)
    table.add_column("src \\ dst", style="bold", no_wrap=True)
    for n in cols:
        table.add_column(num[n], justify="right", no_wrap=True)
    for s in srcs:
        row = []
        for d in cols:
            p = None if s == d else cell.get((s, d))
            row.append("[dim]·[/dim]" if p is None else "[green]✓[/green]" if p.ok else "[bold red]✗[/bold red]")
        table.add_row(f"{num[s]} {label(s)}" if s in num else label(s), *row)
    return table


def failure_lines(pairs: Sequence[Any], host_of: Callable[[str], str | None],
                  label: Callable[[str], str] = str) -> list[str]:
    """The failed pairs as few lines: a host no other host reaches, a host that reaches
    no other host, a host pair whose every pair fails, then single pairs (MAX_LINES at
    most, the rest counted). `host_of(endpoint)`: the host it is on (None: unknown)."""
    bad = [p for p in pairs if not p.ok]
    if not bad:
        return []
    hosts = {p.src: host_of(p.src) for p in pairs} | {p.dst: host_of(p.dst) for p in pairs}
    cross = [p for p in pairs if hosts[p.src] is None or hosts[p.src] != hosts[p.dst]]
    all_hosts = sorted({h for h in hosts.values() if h is not None})
    lines: list[str] = []
    left = list(bad)

    def take(group: list[Any], text: str) -> None:
        nonlocal left
        lines.append(f"{text} ({len(group)} pair{'s' if len(group) != 1 else ''})")
        ids = {id(p) for p in group}
        left = [p for p in left if id(p) not in ids]

    if len(all_hosts) > 2:  # with two hosts "unreachable from every host" says nothing more than the pair
        for h in all_hosts:
            to_h = [p for p in cross if hosts[p.dst] == h]
            if len(to_h) > 1 and all(not p.ok for p in to_h) and \
                    {hosts[p.src] for p in to_h} >= set(all_hosts) - {h}:
                take(to_h, f"{h}: unreachable from every host")
        for h in all_hosts:
            from_h = [p for p in cross if hosts[p.src] == h]
            rest = [p for p in from_h if p in left]
            if len(from_h) > 1 and all(not p.ok for p in from_h) and rest:
                take(rest, f"{h}: reaches no other host")
    by_hosts: dict[tuple[str | None, str | None], list[Any]] = {}
    for p in pairs:
        by_hosts.setdefault((hosts[p.src], hosts[p.dst]), []).append(p)
    for (sh, dh), group in by_hosts.items():
        if sh is None or dh is None or len(group) < 2:
            continue
        failed = [p for p in group if p in left]
        if failed and len(failed) == len(group):
            errs = {short_error(p.error) for p in failed}
            why = f": {errs.pop()}" if len(errs) == 1 else ""
            take(failed, f"{sh} → {dh}: every pair fails{why}")
    for p in left:
        lines.append(f"{label(p.src)} → {label(p.dst)}: {short_error(p.error)}")
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"... and {len(lines) - MAX_LINES} more"]
    return lines


def container_label(cid: str, name: str | None) -> str:
    """How `status` and `attach` name a container: its runtime name when it has one,
    with a short id when the id is a runtime's 64-hex id (`web (3f2a1b0c9d8e)`)."""
    import re

    if not name:
        return cid
    if name == cid:
        return name
    hexid = re.fullmatch(r"(?:[0-9a-f]{64})(?:[-:/].*)?", cid)
    return f"{name} ({cid[:12]})" if hexid else f"{name} ({cid})"
