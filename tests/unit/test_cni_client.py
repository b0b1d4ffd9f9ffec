"""crossnet-cni's fast entry point: JSON without the json module, helper requests."""

from __future__ import annotations

import contextlib
import json
import os
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


NOBODY = 65534
FOREIGN_REPLY = b'{"rc": 0, "stdout": "{\\"cniVersion\\": \\"1.0.0\\", \\"hijacked\\": true}"}'
_LISTENER = r"""
import os, socket, sys
path, uid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)                       # root may make the socket in a root-owned directory ...
os.chmod(path, 0o777)
os.setgid(uid); os.setuid(uid)     # ... but the listener (SO_PEERCRED: who called listen) is uid
s.listen(8)
print("ready", flush=True)
s.settimeout(float(sys.argv[3]))
got = 0
try:
    while True:
        c, _ = s.accept()
        c.settimeout(2)
        data = b""
        try:
            while chunk := c.recv(65536):
                data += chunk
        except OSError:
            pass
        got += len(data)
        try:
            c.sendall(sys.argv[4].encode())
        except OSError:
            pass  # the client went away without a word
        c.close()
except OSError:  # no connection for a while: done
    pass
print("received", got, flush=True)
"""


@contextlib.contextmanager
def foreign_listener(path: str, uid: int = NOBODY, wait: float = 3.0):
    """A unix socket at ``path`` listened on by another user (uid): answers every
    connection with FOREIGN_REPLY; yields a dict whose "received" (bytes it was sent in
    all) is filled in when the block ends."""
    proc = subprocess.Popen([sys.executable, "-S", "-c", _LISTENER, path, str(uid), str(wait),
                             FOREIGN_REPLY.decode()], stdout=subprocess.PIPE, text=True)
    out: dict = {}
    ino = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        ino = os.stat(path).st_ino
        yield out
    finally:
        tail = proc.communicate(timeout=wait + 10)[0].split()
        out["received"] = int(tail[-1]) if tail[-2:-1] == ["received"] else None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == ino:  # a helper may have put its own socket there since
                os.unlink(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a listener of another uid)")
def test_a_socket_of_another_user_is_never_handed_the_call(tmp_path):
    """stateDir pointing at a directory another user can write: a helper socket that user
    made there gets nothing (client.peer_is_us), the call runs in the process instead."""
    import crossnet.cni as protocol

    (tmp_path / "applied.json").write_text("{}")
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "stateDir": str(tmp_path)}).encode()
    with foreign_listener(str(tmp_path / protocol.SOCKET_NAME), wait=1.0) as seen:
        assert protocol.call(str(tmp_path), env, conf) is None
    assert seen["received"] == 0
    # the same listener as this process's user is used: the check is the uid, nothing else
    with foreign_listener(str(tmp_path / protocol.SOCKET_NAME), uid=os.geteuid(), wait=1.0) as seen:
        rc, stdout = protocol.call(str(tmp_path), env, conf)
    assert (rc, json.loads(stdout)["hijacked"]) == (0, True) and seen["received"] > 0
