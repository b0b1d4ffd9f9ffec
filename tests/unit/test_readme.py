"""The README's examples are the files in examples/, and every command block of the
README says whether tests/e2e/test_readme.py runs it in a lab (`<!-- readme-test: lab -->`)
or why not (`<!-- readme-test: skip: WHY -->`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```\n", re.S)


def blocks() -> list[tuple[str | None, str, str]]:
    return [(m["mark"], m["lang"], m["body"]) for m in BLOCK.finditer(README)]


def lab_commands() -> list[str]:
    """The commands of the README's `lab` blocks, optional `[...]` parts and comments removed."""
    out = []
    for mark, lang, body in blocks():
        if mark == "lab":
            for line in body.splitlines():
                cmd = re.sub(r"\s+#.*$", "", line)
                cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd).strip()
                if cmd:
                    out.append(cmd)
    return out


def test_readme_yaml_examples_are_the_files():
    shown = [(body.splitlines()[0], body) for _, lang, body in blocks() if lang == "yaml"]
    assert shown, "no yaml example in the README"
    for first, body in shown:
        m = re.fullmatch(r"# (examples/[\w.-]+\.yaml)", first)
        assert m, f"a yaml block of the README does not name its file in examples/: {first!r}"
        assert body.split("\n", 1)[1] == (ROOT / m[1]).read_text(), f"README's {m[1]} differs from the file"


def test_every_command_block_is_marked():
    shell = [(mark, body) for mark, lang, body in blocks() if lang == "sh"]
    assert len(shell) >= 5
    for mark, body in shell:
        assert mark is not None, f"README command block without a readme-test mark:\n{body}"
        assert mark == "lab" or re.fullmatch(r"skip: \S.{10,}", mark), mark
    assert any(m == "lab" for m, _ in shell)


def test_lab_commands_parse():
    cmds = lab_commands()
    assert cmds[0] == "crossnet lab up --hosts 3 --underlay l2 --backend vxlan --containers 2"
    assert all(c.startswith("crossnet ") for c in cmds)
