"""The text of check / lab check for many containers (crossnet.cli.checkview)."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from crossnet.check import Pair
from crossnet.cli.checkview import failure_lines, matrix, short_error

PING_TEXT = ("PING 10.32.2.2 (10.32.2.2) 56(84) bytes of data.\n\n--- 10.32.2.2 ping statistics ---\n"
             "1 packets transmitted, 0 received, 100% packet loss, time 0ms\n")


def lab_pairs(hosts: int = 4, per_host: int = 6, down: str | None = "h3") -> tuple[list[Pair], dict[str, str]]:
    names = [f"cnlab-h{h}-c{c}" for h in range(1, hosts + 1) for c in range(1, per_host + 1)]
    host_of = {n: n.split("-")[1] for n in names}
    pairs = [Pair(s, d, not (down in (host_of[s], host_of[d]) and host_of[s] != host_of[d]),
                  0.1, None if down not in (host_of[s], host_of[d]) else PING_TEXT)
             for s in names for d in names if s != d]
    pairs = [p if p.ok else Pair(p.src, p.dst, False, None, PING_TEXT) for p in pairs]
    return pairs, host_of


def render(table, width: int = 100) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(table)
    return buf.getvalue()


def test_24_containers_headers_are_distinct():
    """24 columns in 100 characters: numbered headers, nothing truncated into `cnlab-…`,
    and the caption says which number is which."""
    pairs, _ = lab_pairs()
    text = render(matrix(pairs, title="t", label=lambda n: n.removeprefix("cnlab-")))
    header = next(line for line in text.splitlines() if "src \\ dst" in line)
    cols = header.split()[3:]
    assert cols == [str(i) for i in range(1, 25)]
    assert "…" not in header
    assert "1=h1-c1" in " ".join(text.split()) and "24=h4-c6" in " ".join(text.split())
    assert "1 h1-c1" in text  # rows carry the number of their column
    assert "RTT median 0.10 ms" in " ".join(text.split())


def test_few_columns_keep_names():
    pairs = [Pair("a", "b", True, 0.5, None), Pair("b", "a", False, None, "x")]
    text = render(matrix(pairs))
    assert "a" in text and "columns:" not in text


def test_failures_grouped_per_host():
    """h3 down among 4 hosts of 6 containers: one line, not 108."""
    pairs, host_of = lab_pairs()
    lines = failure_lines(pairs, host_of.get, lambda n: n.removeprefix("cnlab-"))
    assert lines[0] == "h3: unreachable from every host (108 pairs)"
    assert lines[1] == "h3: reaches no other host (108 pairs)"
    assert len(lines) == 2


def test_failures_per_host_pair_then_single():
    pairs, host_of = lab_pairs(hosts=3, per_host=2, down=None)
    pairs = [Pair(p.src, p.dst, False, None, PING_TEXT) if (host_of[p.src], host_of[p.dst]) == ("h1", "h2")
             else p for p in pairs]
    pairs[0] = Pair(pairs[0].src, pairs[0].dst, False, None, "Network is unreachable")  # h1-c1 → h1-c2
    lines = failure_lines(pairs, host_of.get)
    assert lines == ["h1 → h2: every pair fails: 1 packets transmitted, 0 received, 100% packet loss, time 0ms "
                     "(4 pairs)", "cnlab-h1-c1 → cnlab-h1-c2: Network is unreachable"]


def test_no_failures_no_lines():
    pairs, host_of = lab_pairs(down=None)
    assert failure_lines(pairs, host_of.get) == []


def test_short_error_is_one_line():
    assert short_error(PING_TEXT) == "1 packets transmitted, 0 received, 100% packet loss, time 0ms"
    assert short_error(None) == "unreachable"
    assert len(short_error("x" * 500)) == 70 and "\n" not in short_error("a\nb")


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4), st.booleans()), max_size=40))
def test_every_failure_is_counted(spec):
    """Grouped or not, the lines account for every failed pair exactly once."""
    pairs = [Pair(f"h{s}-c{i}", f"h{d}-c{i + 1}", ok, None, None) for i, (s, d, ok) in enumerate(spec)]
    host_of = {n: n.split("-")[0] for p in pairs for n in (p.src, p.dst)}
    lines = failure_lines(pairs, host_of.get)
    if len(lines) > 10:
        return
    counted = 0
    for line in lines:
        if line.endswith(" pairs)") or line.endswith(" pair)"):
            counted += int(line.rsplit("(", 1)[1].split()[0])
        else:
            counted += 1
    assert counted == sum(1 for p in pairs if not p.ok)


def test_container_label_names_runtime_containers():
    """status/attach show a podman/docker container by its name, with a short id."""
    from crossnet.cli.checkview import container_label

    hexid = "3f2a1b0c9d8e" + "0" * 52
    assert container_label(hexid, "web") == "web (3f2a1b0c9d8e)"
    assert container_label(hexid + "/net1", "web") == "web (3f2a1b0c9d8e)"
    assert container_label("cnlab-h1-c1", None) == "cnlab-h1-c1"
    assert container_label("cnlab-h1-c1", "db") == "db (cnlab-h1-c1)"
    assert container_label("web", "web") == "web"


def test_wide_matrix_keeps_the_callers_note():
    pairs, _ = lab_pairs()
    text = " ".join(render(matrix(pairs, caption="RTT in ms; ✗ = unreachable; NAME (gateway): a peer")).split())
    assert "NAME (gateway): a peer" in text and "RTT median" in text
