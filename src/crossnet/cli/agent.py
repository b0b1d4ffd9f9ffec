"""`crossnet agent` and `crossnet etcd init|show`: dynamic clusters on etcd."""

from __future__ import annotations

import sys

import click

from crossnet import backends

ETCD_OPTS = [
    click.option("--etcd", "etcd", envvar="CROSSNET_ETCD", required=True,
                 help="etcd client URL(s), comma-separated: http://10.0.0.1:2379,... Env: CROSSNET_ETCD."),
    click.option("--prefix", default="/crossnet", show_default=True, envvar="CROSSNET_ETCD_PREFIX",
                 help="Key prefix (one cluster per prefix)."),
    click.option("--cert", type=click.Path(dir_okay=False), help="TLS client certificate (PEM)."),
    click.option("--key", "keyfile", type=click.Path(dir_okay=False), help="TLS client key (PEM)."),
    click.option("--cacert", type=click.Path(dir_okay=False), help="CA bundle to verify etcd's certificate."),
    click.option("--timeout", type=float, default=5.0, show_default=True, help="Per-request timeout (s)."),
]


def etcd_options(fn):
    for opt in reversed(ETCD_OPTS):
        fn = opt(fn)
    return fn


def _store(etcd: str, prefix: str, cert, keyfile, cacert, timeout: float):
    from crossnet.store.etcd import EtcdStore

    return EtcdStore.connect(etcd, prefix, cert=cert, key=keyfile, cacert=cacert, timeout=timeout)


def network_options(fn):
    """--network-name/--network-cidr (repeatable, in pairs) and --networks-file: the named
    networks of a store's config (docs/networks.md); `etcd init` and `launch` take them."""
    fn = click.option("--networks-file", type=click.Path(dir_okay=False), default=None,
                      help="YAML/JSON list of named networks, as the cluster file's `networks:` "
                           "(name, network, subnet_len, vni, bridge).")(fn)
    fn = click.option("--network-cidr", "network_cidrs", multiple=True, metavar="CIDR",
                      help="The CIDR of the --network-name of the same position.")(fn)
    return click.option("--network-name", "network_names", multiple=True, metavar="NAME",
                        help="One more isolated network (repeatable, each with a --network-cidr).")(fn)


def named_networks(names: tuple[str, ...], cidrs: tuple[str, ...], path: str | None) -> dict:
    """The ``networks`` of a store's config from the options (none: no key)."""
    from crossnet.errors import ConfigError

    if len(names) != len(cidrs):
        raise ConfigError(f"--network-name/--network-cidr: {len(names)} name(s) but {len(cidrs)} CIDR(s); "
                          "give each --network-name its --network-cidr")
    out: list = [{"name": n, "network": c} for n, c in zip(names, cidrs, strict=True)]
    if path:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh.read(1 << 20))
        except (OSError, yaml.YAMLError, RecursionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--networks-file: cannot read {path}: {' '.join(str(exc).split())[:200]}") from None
        if isinstance(data, dict) and "networks" in data:
            data = data["networks"]
        if not isinstance(data, list):
            raise ConfigError("--networks-file: expected a list of networks (or a mapping with `networks:`)")
        out += data
    return {"networks": out} if out else {}


@click.group("etcd")
def etcd_group() -> None:
    """Manage the cluster's network config in etcd (for `crossnet agent`)."""


@etcd_group.command("init")
@etcd_options
@click.option("--network", required=True, help="Container network, e.g. 10.32.0.0/16.")
@click.option("--subnet-len", type=int, default=24, show_default=True, help="Prefix length of each host's subnet.")
@click.option("--backend", type=click.Choice(backends.store_backend_names()), default="vxlan",
              show_default=True, help="Data plane of every host (docs/cluster-file.md).")
@click.option("--ttl", type=int, default=60, show_default=True,
              help="Lease TTL (s): a host that stops renewing is removed from its peers after this.")
@click.option("--masquerade", is_flag=True, help="NAT container traffic leaving the container network.")
@click.option("--name", "cluster_name", default="crossnet", show_default=True, help="Cluster name.")
@click.option("--mtu", type=int, help="Underlay MTU (default: each host's NIC MTU).")
@click.option("--vni", type=int, default=1, show_default=True, help="VXLAN network identifier.")
@click.option("--port", type=int, default=4789, show_default=True, help="VXLAN UDP port.")
@click.option("--wireguard-port", type=int, default=51820, show_default=True, help="WireGuard UDP port (backend wireguard).")
@click.option("--wireguard-keepalive", type=int, default=0, show_default=True,
              help="WireGuard persistent keepalive in seconds, 0 = off (backend wireguard).")
@click.option("--encrypt", is_flag=True, help="Backend auto: every peer over WireGuard (docs/transport.md).")
@click.option("--dns-domain", default="crossnet.local", show_default=True,
              help="Containers' DNS names are NAME.<this domain> (docs/dns.md).")
@click.option("--datapath", default="kernel", show_default=True,
              help="kernel (container bridge) or ebpf (routed container veths; docs/datapath.md).")
@network_options
@click.option("--force", is_flag=True, help="Replace a different existing config (a change of its networks only: "
                                            "the agents follow it; anything else: restart them).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for scripts (docs/json.md).")
def etcd_init(etcd, prefix, cert, keyfile, cacert, timeout, network, subnet_len, backend, ttl, masquerade,
              cluster_name, mtu, vni, port, wireguard_port, wireguard_keepalive, encrypt, dns_domain, datapath,
              network_names, network_cidrs, networks_file, force, output) -> None:
    """Write the cluster's network config to etcd (once; idempotent)."""
    from crossnet.store import NetworkConfig

    def option(field: str) -> str:  # vxlan.vni -> --vni, wireguard.port -> --wireguard-port
        if field.startswith("networks"):
            return field  # networks[1].network: the n-th --network-name/--network-cidr (or the file's entry)
        return "--" + field.removeprefix("vxlan.").removeprefix("auto.").replace("wireguard.", "wireguard-").replace("_", "-")

    cfg = NetworkConfig.parse({"network": network, "backend": backend, "subnet_len": subnet_len, "name": cluster_name,
                               "ttl": ttl, "masquerade": masquerade, "dns_domain": dns_domain, "mtu": mtu, "vxlan": {"vni": vni, "port": port},
                               "wireguard": {"port": wireguard_port, "keepalive": wireguard_keepalive},
                               **({"auto": {"encrypt": True}} if encrypt else {}), "datapath": datapath,
                               **named_networks(network_names, network_cidrs, networks_file)},
                              source="", label=option)
    store = _store(etcd, prefix, cert, keyfile, cacert, timeout)
    if cfg.networks:  # every network's VNI written out; one already in the store keeps its own
        from crossnet import netstore
        from crossnet.store import StoreError

        try:
            old = store.get_config()
        except StoreError:  # none yet (or unreadable: replaced only with --force)
            old = None
        cfg = netstore.pin_vnis(cfg, old)
    result = store.init_config(cfg, force=force)
    if output == "json":
        from crossnet.cli.contract import emit

        emit({"result": result, "key": store.config_key, "config": cfg.to_json()})
    else:
        more = "".join(f", network {n.name} {n.network}" for n in cfg.networks)
        click.echo(f"{store.config_key}: {result}: network {cfg.network}, /{cfg.subnet_len} per host, "
                   f"backend {cfg.backend}, lease ttl {cfg.ttl}s{more}")


@etcd_group.command("show")
@etcd_options
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for scripts (docs/json.md).")
def etcd_show(etcd, prefix, cert, keyfile, cacert, timeout, output) -> None:
    """Show the network config and the hosts holding a subnet lease."""
    from crossnet.store import NotInitialized

    store = _store(etcd, prefix, cert, keyfile, cacert, timeout)
    try:
        cfg = store.get_config().to_json()
    except NotInitialized:
        cfg = None
    snap = store.snapshot()
    remembered = store.remembered()
    leases = [{**h.to_json(), "lease": f"{h.lease:x}"} for h in sorted(snap.hosts, key=lambda h: h.subnet)]
    if output == "json":
        from crossnet.cli.contract import emit

        emit({"config": cfg, "revision": snap.revision, "hosts": leases,
              "remembered": {k: str(v) for k, v in remembered.items()}})
        return
    if cfg is None:
        click.echo(f"{store.config_key}: not initialised (run `crossnet etcd init`)")
    else:
        click.echo(f"network {cfg['network']} /{cfg['subnet_len']} backend {cfg['backend']} ttl {cfg['ttl']}s")
    click.echo(f"{len(leases)} host(s) at revision {snap.revision}:")
    for h in leases:
        nets = "".join(f", {n} {sub}" for n, sub in sorted((h.get("networks") or {}).items()))  # named networks
        click.echo(f"  {h['name']:20} {h['address']:15} {h['subnet']:18} lease {h['lease']}{nets}")


@click.command("agent")
@click.option("--etcd", "etcd", envvar="CROSSNET_ETCD",
              help="etcd client URL(s), comma-separated. Env: CROSSNET_ETCD.")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False),
              help="Use a static cluster file instead of etcd.")
@click.option("--prefix", default="/crossnet", show_default=True, envvar="CROSSNET_ETCD_PREFIX",
              help="etcd key prefix (one cluster per prefix).")
@click.option("--cert", type=click.Path(dir_okay=False), help="TLS client certificate (PEM).")
@click.option("--key", "keyfile", type=click.Path(dir_okay=False), help="TLS client key (PEM).")
@click.option("--cacert", type=click.Path(dir_okay=False), help="CA bundle to verify etcd's certificate.")
@click.option("--host", "--name", "name", help="This host's name (default: the machine's host name; "
                                                "--name is the old spelling).")
@click.option("--iface", help="Underlay interface (default: the one of the default route).")
@click.option("--address", help="Underlay address to publish (default: the interface's first IPv4 address).")
@click.option("--ttl", type=int, help="Lease TTL in seconds (default: the network config's).")
@click.option("--release", is_flag=True,
              help="On shutdown give the subnet back and remove this host's state (like `crossnet reset`).")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Give up start-up after this many failed attempts per step (0: keep retrying).")
@click.option("--backoff-max", type=float, default=10.0, show_default=True, help="Longest wait between retries (s).")
@click.option("--resync", type=float, default=60.0, show_default=True,
              help="Full re-read of the store and repair of the host every S seconds.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="etcd request timeout (s).")
@click.option("--no-api", is_flag=True, help="Do not serve the local API socket.")
@click.option("--probe-mtu/--no-probe-mtu", default=None,
              help="Measure every peer's path MTU (at start, every resync, when a peer joins) and size the "
                   "container MTU to fit (docs/mtu.md). Default: on for backend auto (its transports are chosen "
                   "by full-size probes), off for the others.")
@click.option("--metrics-address", metavar="HOST:PORT",
              help="Serve Prometheus /metrics, /healthz and /readyz here (off by default; a bare PORT is "
                   "127.0.0.1:PORT; docs/production.md).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per line (ts, level, logger, msg, fields).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
@click.pass_context
def agent(ctx, etcd, path, prefix, cert, keyfile, cacert, name, iface, address, ttl, release, retries,
          backoff_max, resync, timeout, no_api, probe_mtu, metrics_address, log_format, verbose) -> None:
    """Run the crossnet agent on this host (foreground, logs to stderr).

    Registers this host in etcd, leases a subnet (the same one after a restart),
    programs this host with the network's backend, and follows the other hosts as
    they join and leave. SIGTERM leaves the data plane in place; with --release the
    subnet is given back and the host is reset. Local API: <state-dir>/agent.sock.
    """
    from crossnet.agent.core import Agent, AgentOptions, setup_logging
    from crossnet.errors import ConfigError
    from crossnet.state import StateDir

    if bool(etcd) == bool(path):
        raise ConfigError("--etcd: give exactly one of --etcd URL or --file CLUSTER")
    if iface is not None:
        from crossnet.ifname import check_ifname

        check_ifname(iface, "--iface")
    if ttl is not None and ttl < 2:
        raise ConfigError(f"--ttl: must be at least 2 seconds, got {ttl}")
    if retries < 0 or backoff_max <= 0 or resync <= 0:
        raise ConfigError("--retries/--backoff-max/--resync: must be positive")
    if metrics_address is not None:
        from crossnet.agent.metrics import parse_address

        parse_address(metrics_address)  # bad input: exit 2 before anything starts
    setup_logging(verbose, log_format)
    if path:
        from crossnet.store.static import StaticStore

        store = StaticStore(path)
    else:
        from crossnet import netconfig

        netconfig.use_helper()  # the store's config validated in a helper: no pydantic in this process
        netconfig.prestart()  # which imports the model while this process connects
        store = _store(etcd, prefix, cert, keyfile, cacert, timeout)
    opts = AgentOptions(name=name, iface=iface, address=address, ttl=ttl, release=release, retries=retries,
                        backoff_initial=min(0.5, backoff_max), backoff_max=backoff_max, resync=resync,
                        api=not no_api, probe_mtu=probe_mtu)
    the_agent = Agent(store, StateDir(ctx.obj["state_dir"]), opts)
    server = None
    if metrics_address is not None:
        from crossnet.agent.metrics import serve

        server = serve(the_agent, metrics_address)
    try:
        code = the_agent.run()
    finally:
        if server is not None:
            server.close()
    sys.exit(code)


def register(main: click.Group) -> None:
    main.add_command(agent)
    main.add_command(etcd_group)
