"""`python -m crossnet.mesh.supervise --state-dir DIR launch --foreground`: the detached
`crossnet launch` supervisor (crossnet.mesh.launch.Supervisor) started without the CLI —
click and the command modules are not loaded into the long-running process (~1 MB of
its RSS, docs/mesh.md "Resources"). The arguments are those of `crossnet launch
--foreground`, so the process still reads as one (`Paths.running_pid`, `ps`)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "--state-dir" or argv[2:] != ["launch", "--foreground"]:
        print("usage: python -m crossnet.mesh.supervise --state-dir DIR launch --foreground", file=sys.stderr)
        return 2
    from crossnet.errors import CrossnetError
    from crossnet.mesh.launch import run_foreground

    try:
        return run_foreground(argv[1])
    except CrossnetError as exc:
        print(f"crossnet: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
