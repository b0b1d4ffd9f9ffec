"""The Docker network `crossnet docker-plugin` creates itself (like Weave's plugin):
``docker network create -d crossnet --ipam-driver crossnet --subnet SUBNET --gateway GW
NAME`` through the Docker Engine API, so that `docker run --network crossnet` works with
no create step and `docker network inspect` shows this host's subnet and gateway (the
literal command without ``--subnet`` gets the pool 0.0.0.0/0: docs/docker.md).

dockerd may start after the plugin, and this host may get its subnet after it: a
background thread retries with a bounded backoff and logs each kind of wait once. An
existing network of that name is left alone (it may have containers; Docker cannot change
a network's subnet): when it has the 0.0.0.0/0 pool or another subnet than this host's
(new lease), one log line says how to recreate it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from crossnet.errors import ConfigError, CrossnetError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # what Docker accepts, bounded
ANY_POOL = "0.0.0.0/0"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"--network-name: {name[:80]!r} is not a Docker network name "
                          "(letters, digits, '_', '.', '-'; at most 63)")
    return name


def network_config(subnet: str, gateway: str, name: str, driver: str = "crossnet") -> dict[str, Any]:
    """The body of POST /networks/create (= docker network create -d crossnet
    --ipam-driver crossnet --subnet SUBNET --gateway GW NAME)."""
    return {"Name": name, "Driver": driver, "CheckDuplicate": True,
            "IPAM": {"Driver": driver, "Config": [{"Subnet": subnet, "Gateway": gateway}]}}


def existing_note(info: Any, name: str, subnet: str, gateway: str) -> str:
    """One log line about an existing network of that name (left alone)."""
    configs = ((info.get("IPAM") or {}).get("Config") or []) if isinstance(info, dict) else []
    have = configs[0] if configs and isinstance(configs[0], dict) else {}
    recreate = (f"to recreate it: docker network rm {name} (once no container uses it), then restart "
                "crossnet docker-plugin")
    driver = info.get("Driver") if isinstance(info, dict) else None
    if driver != "crossnet":
        return f"Docker network {name!r} exists with driver {driver!r}, not crossnet: left alone ({recreate})"
    if have.get("Subnet") == ANY_POOL:
        return (f"Docker network {name!r} exists without a subnet (pool {ANY_POOL}, created without --subnet): "
                f"it works, but docker network inspect does not show {subnet}; {recreate}")
    if have.get("Subnet") != subnet or have.get("Gateway") != gateway:
        return (f"Docker network {name!r} has subnet {have.get('Subnet')} gateway {have.get('Gateway')}, but this "
                f"host's crossnet subnet is now {subnet} gateway {gateway}: Docker cannot change a network's subnet "
                f"while containers use it; new containers fail until it is recreated: {recreate}")
    return f"Docker network {name!r} exists (subnet {subnet}, gateway {gateway})"


class NetworkCreator:
    """Creates the network once dockerd and this host's subnet are there.

    ``subnet()`` gives (subnet, gateway) or raises CrossnetError (not configured yet);
    ``client`` has ``request(method, path, body=None) -> (status, data)`` (EngineClient)."""

    def __init__(self, client: Any, name: str, subnet: Callable[[], tuple[str, str]],
                 log: Callable[[str], None], *, first_delay: float = 0.2, max_delay: float = 2.0,
                 max_tries: int | None = None):
        self.client = client
        self.name = check_name(name)
        self.subnet = subnet
        self.log = log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_tries = max_tries  # None: until it worked or stop() (tests bound it)
        self.done = threading.Event()
        self.result = ""  # the last line logged about the network
        self._stop = threading.Event()
        self._waiting: set[str] = set()

    def _wait_once(self, kind: str, msg: str) -> None:
        if kind not in self._waiting:
            self._waiting.add(kind)
            self.log(msg)

    def attempt(self) -> bool:
        """One try: True when finished (created, or found existing)."""
        try:
            subnet, gateway = self.subnet()
        except CrossnetError as exc:
            self._wait_once("subnet", f"waiting to create Docker network {self.name!r}: {exc}")
            return False
        path = f"/networks/{quote(self.name, safe='')}"
        try:
            status, data = self.client.request("GET", path)
            if status == 404:
                status, data = self.client.request("POST", "/networks/create",
                                                   body=network_config(subnet, gateway, self.name))
                if status in (200, 201):
                    self.result = f"created Docker network {self.name!r} (subnet {subnet}, gateway {gateway})"
                    self.log(self.result)
                    return True
                if status != 409:  # 409: created meanwhile (by someone else): inspect it next time
                    msg = data.get("message") if isinstance(data, dict) else data
                    self._wait_once(f"create{status}", f"creating Docker network {self.name!r} failed "
                                                       f"(HTTP {status}): {str(msg)[:200]}; retrying")
                return False
            if status != 200:
                self._wait_once(f"get{status}", f"Docker API: GET {path}: HTTP {status}; retrying")
                return False
        except CrossnetError as exc:  # no socket yet / dockerd not answering
            self._wait_once("docker", f"waiting for dockerd to create Docker network {self.name!r}: {exc}")
            return False
        self.result = existing_note(data, self.name, subnet, gateway)
        self.log(self.result)
        return True

    def run(self) -> None:
        delay, tries = self.first_delay, 0
        while not self._stop.is_set():
            tries += 1
            if self.attempt():
                self.done.set()
                return
            if self.max_tries is not None and tries >= self.max_tries:
                return
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_delay)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="crossnet-docker-network", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
