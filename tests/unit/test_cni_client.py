"""crossnet-cni's fast entry point: JSON without the json module, helper requests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crossnet.cni import client


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, "x\\u00e9"], "b": {"c": null, "d": true}}', " [] ", '"s"', "0"])
def test_loads_matches_json(text):
    assert client.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "{this is not json", '{"a": 1} x', "[1,]", "nul"])
def test_loads_rejects_garbage(text):
    with pytest.raises(ValueError):
        client.loads(text)


def test_request_round_trip():
    environ = {"CNI_COMMAND": "ADD", "CNI_ARGS": 'K="v";IP=1.2.3.4', "HOME": "/root", "CNI_IFNAME": "eth0"}
    stdin = '{"cniVersion": "1.0.0", "name": "é"}'.encode() + b"\xff"
    req = json.loads(client.request_bytes(environ, stdin))
    assert req["environ"] == {"CNI_COMMAND": "ADD", "CNI_ARGS": 'K="v";IP=1.2.3.4', "CNI_IFNAME": "eth0"}
    assert req["stdin"].encode("utf-8", "surrogateescape") == stdin
    assert req["code"] == client.code_id() and len(req["netns"]) == 2


def test_server_target(tmp_path):
    (tmp_path / "applied.json").write_text("{}")
    conf = {"cniVersion": "1.0.0", "name": "n", "stateDir": str(tmp_path)}
    add = {"CNI_COMMAND": "ADD"}
    assert client.server_target(add, json.dumps(conf).encode())[0] == str(tmp_path)
    assert client.server_target({"CNI_COMMAND": "VERSION"}, json.dumps(conf).encode())[0] is None
    assert client.server_target(add, json.dumps({**conf, "server": False}).encode())[0] is None
    assert client.server_target(add, json.dumps({**conf, "stateDir": str(tmp_path / "x")}).encode())[0] is None
    assert client.server_target(add, b"garbage") == (None, None)


def test_client_imports_no_python_json_or_re():
    code = ("import sys; import crossnet.cni.client; "
            "print(sorted(m for m in ('json', 're', 'socket', 'typing', 'pyroute2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_code_id_names_files_that_exist():
    """A running helper steps down when crossnet's code changes (code_id: mtimes of these
    files); a file that moved would count as "-" forever and hide the change."""
    from pathlib import Path

    import crossnet
    from crossnet.cni import _CODE_FILES

    root = Path(crossnet.__file__).parent
    assert [f for f in _CODE_FILES if not (root / f).is_file()] == []
