"""The DNS server: UDP and TCP on the host's container gateway address(es), answers from
a :class:`crossnet.dns.Table`, other names forwarded to the host's own resolvers.

Queries are untrusted: a datagram larger than :data:`MAX_QUERY` is dropped, a message
that does not parse or asks anything but one question of opcode QUERY gets FORMERR (or
nothing when not even its header parses), an answer never holds more than the records
of the one name asked (UDP: cut to the client's size with TC set), forwarded queries are
bounded in number (:data:`MAX_PENDING`, else SERVFAIL) and time (:data:`FORWARD_TIMEOUT`
per upstream, :data:`FORWARD_TOTAL` in all), TCP connections are capped
(:data:`MAX_TCP`, :data:`MAX_TCP_PER_SOURCE` from one client; a
:class:`crossnet.serveloop.ConnectionSlots`) and closed when a query has not arrived whole :data:`TCP_IDLE` seconds
after the server began waiting for it (a byte now and then does not extend that), or
after ``4 * TCP_IDLE`` seconds in all. Only ``clients`` (the container network and the
listen addresses) get anything: a query from elsewhere is dropped, never forwarded.
The wire format is dnslib's.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dnslib import AAAA, CLASS, OPCODE, PTR, QTYPE, RCODE, RR, A, DNSHeader, DNSRecord  # noqa: F401

from crossnet.dns import TTL, RoundRobin, Table, normalize
from crossnet.serveloop import ConnectionSlots, Waker, source_key

log = logging.getLogger("crossnet.dns")

MAX_QUERY = 1232  # bytes of one query (the EDNS default buffer): anything longer is dropped
UDP_PLAIN = 512
UDP_MAX = 1232  # largest UDP answer whatever the client's EDNS size says
MAX_ANSWERS = 32  # records in one answer (a name with more addresses: the first 32 of the rotation)
MAX_PENDING = 64  # forwarded queries in flight; more: SERVFAIL
FORWARD_TIMEOUT = 1.0
FORWARD_TOTAL = 2.5
MAX_TCP = 32
MAX_TCP_PER_SOURCE = 8  # one client's share of MAX_TCP (an IPv6 client: its /64)
TCP_IDLE = 5.0
TCP_MAX_QUERIES = 100  # per connection
IP_FREEBIND = 15  # linux/in.h: bind before the gateway address exists (the bridge comes later)


# --------------------------------------------------------------------------- answers


def _bare(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply to a message that did not parse (None: not even its header did)."""
    if len(data) < 12:
        return None
    try:
        header = DNSHeader.parse(_Buffer(data))
    except Exception:  # noqa: BLE001 - hostile bytes
        return None
    if header.qr:  # a response sent to us: never answer it (no reflection loops)
        return None
    return DNSRecord(DNSHeader(id=header.id, qr=1, opcode=header.opcode, rd=header.rd, ra=1, rcode=rcode)).pack()


class _Buffer:
    """The minimal buffer dnslib's DNSHeader.parse reads (12 bytes)."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        out = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return out


def udp_limit(query: DNSRecord) -> int:
    """The answer size the client takes over UDP (its EDNS0 buffer, bounded)."""
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_PLAIN, min(int(rr.rclass), UDP_MAX))
    return UDP_PLAIN


def fit(reply: DNSRecord, limit: int | None) -> bytes:
    """``reply`` packed; over ``limit`` (UDP): header and question only, TC set (the
    client retries over TCP)."""
    wire = reply.pack()
    if limit is None or len(wire) <= limit:
        return wire
    cut = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q)
    return cut.pack()


def local_answer(table: Table, query: DNSRecord, rr: RoundRobin) -> DNSRecord | None:
    """The answer crossnet gives itself, or None when the name is not crossnet's (forward it)."""
    q = query.q
    qname = str(q.qname)
    if not table.authoritative(qname):
        return None
    reply = query.reply(ra=1, aa=1)
    reply.ar = []
    if q.qclass not in (CLASS.IN, 255):  # IN or ANY (dnslib spells it "*")
        reply.header.rcode = RCODE.REFUSED
        return reply
    name = normalize(qname)
    if q.qtype in (QTYPE.A, QTYPE.ANY):
        for addr in rr.order(table.addresses(name))[:MAX_ANSWERS]:
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(str(addr)), ttl=TTL))
    if q.qtype in (QTYPE.PTR, QTYPE.ANY):
        for target in table.pointers(name)[:MAX_ANSWERS]:
            reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(target + "."), ttl=TTL))
    if not reply.rr and not table.exists(name):
        reply.header.rcode = RCODE.NXDOMAIN
    return reply


_HEADER = struct.Struct("!HHHHHH")
_A_RR = struct.pack("!HHHIH", 0xC00C, QTYPE.A, 1, TTL, 4)  # name: pointer to the question's
_FLAGS_ANSWER = 0x8000 | 0x0400 | 0x0080  # QR, AA, RA


def fast_answer(table: Table, data: bytes, rr: RoundRobin) -> bytes | None:
    """The answer to the common query — one IN A or AAAA question for a name of
    crossnet's domain, no EDNS option beyond a bare OPT record — packed by hand (the
    general path costs ~180 µs of dnslib per query, this ~15 µs). None: anything else,
    for :func:`parse_query` and :func:`local_answer` (tests/unit/test_dns.py checks both
    give the same answers)."""
    n = len(data)
    if n < 17 or n > MAX_QUERY:
        return None
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # a response, another opcode, odd counts
        return None
    pos, labels = 12, []
    while True:
        if pos >= n:
            return None
        size = data[pos]
        if size == 0:
            pos += 1
            break
        label = data[pos + 1:pos + 1 + size]
        if size > 63 or len(label) != size or b"." in label:  # compression pointer, cut short, escaped dot
            return None
        labels.append(label)
        pos += 1 + size
        if pos > 12 + 255:
            return None
    end = pos + 4
    if end > n:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    if ar:  # only a bare OPT record (root name, type 41) that ends the message
        if n < end + 11 or data[end] != 0 or struct.unpack_from("!H", data, end + 1)[0] != QTYPE.OPT:
            return None
        if end + 11 + struct.unpack_from("!H", data, end + 9)[0] != n:
            return None
    elif end != n:
        return None
    if qclass != 1 or qtype not in (QTYPE.A, QTYPE.AAAA):
        return None
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if not table.authoritative(name) or name.endswith("in-addr.arpa"):
        return None
    addrs = rr.order(table.addresses(name))[:MAX_ANSWERS] if qtype == QTYPE.A else []
    rcode = RCODE.NOERROR if addrs or table.exists(name) else RCODE.NXDOMAIN
    out = _HEADER.pack(ident, _FLAGS_ANSWER | (flags & 0x0100) | rcode, 1, len(addrs), 0, 0) + bytes(data[12:end])
    out += b"".join(_A_RR + a.packed for a in addrs)
    return out if len(out) <= UDP_PLAIN else None


def parse_query(data: bytes) -> tuple[DNSRecord | None, bytes | None]:
    """(the query, None) or (None, the error reply to send — None: send nothing)."""
    if len(data) > MAX_QUERY:
        return None, None
    try:
        query = DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - hostile bytes: dnslib raises several kinds
        return None, _bare(data, RCODE.FORMERR)
    if query.header.qr:
        return None, None
    if query.header.opcode != OPCODE.QUERY:
        return None, _bare(data, RCODE.NOTIMP)
    if len(query.questions) != 1 or query.rr or query.auth:
        return None, _bare(data, RCODE.FORMERR)
    return query, None


# --------------------------------------------------------------------------- forwarding


def udp_exchange(data: bytes, server: str, port: int, timeout: float) -> bytes:
    """One query to ``server`` over UDP (TCP when the answer is truncated)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server, port))
        s.send(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{server}: no answer in {timeout:g}s")
            s.settimeout(left)
            wire = s.recv(65535)
            if len(wire) >= 12 and wire[:2] == data[:2]:
                break  # anything else (a stray datagram): keep waiting
    if len(wire) > 2 and wire[2] & 0x02:  # TC: ask again over TCP
        left = max(0.1, deadline - time.monotonic())
        return tcp_exchange(data, server, port, left)
    return wire


def tcp_exchange(data: bytes, server: str, port: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    with socket.create_connection((server, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", _recv_exact(s, 2, deadline))[0]
        return _recv_exact(s, size, deadline)


def _recv_exact(s: socket.socket, n: int, deadline: float) -> bytes:
    """``n`` bytes from ``s``, all of them by ``deadline`` (time.monotonic): a peer sending
    a byte now and then cannot stretch one message past it (TimeoutError)."""
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("message not received in time")
        s.settimeout(left)
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


Exchange = Callable[[bytes, str, int, float], bytes]


class Forwarder:
    """Sends a query on to the host's resolvers in order (each bounded by ``timeout``, all
    by ``total``) with a fresh random id; the answer must carry that id and the same
    question, and goes back to the client with the client's id."""

    def __init__(self, upstreams: Sequence[str], port: int = 53, timeout: float = FORWARD_TIMEOUT,
                 total: float = FORWARD_TOTAL, exchange: Exchange = udp_exchange):
        self.upstreams = list(upstreams)
        self.port, self.timeout, self.total, self.exchange = port, timeout, total, exchange
        self.failures = 0

    def forward(self, query: DNSRecord) -> DNSRecord:
        if not self.upstreams:
            return self._servfail(query)
        ident = int.from_bytes(os.urandom(2), "big")
        out = DNSRecord(DNSHeader(id=ident, bitmap=query.header.bitmap), q=query.q)
        out.ar = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]  # EDNS size only
        wire = out.pack()
        deadline = time.monotonic() + self.total
        for server in self.upstreams:
            left = min(self.timeout, deadline - time.monotonic())
            if left <= 0:
                break
            try:
                reply = DNSRecord.parse(self.exchange(wire, server, self.port, left))
            except Exception as exc:  # noqa: BLE001 - timeouts, refused, garbage from upstream
                log.debug("forwarding %s to %s: %s", query.q.qname, server, exc)
                continue
            if reply.header.id != ident or not reply.header.qr or reply.questions != [query.q]:
                log.debug("forwarding %s to %s: answer for another question, ignored", query.q.qname, server)
                continue
            reply.header.id = query.header.id
            return reply
        self.failures += 1
        return self._servfail(query)

    @staticmethod
    def _servfail(query: DNSRecord) -> DNSRecord:
        reply = query.reply(ra=1, aa=0)
        reply.ar = []
        reply.header.rcode = RCODE.SERVFAIL
        return reply


# --------------------------------------------------------------------------- server


class DnsServer:
    """UDP and TCP listeners on ``addresses`` (port ``port``) answering from the table
    ``set_table`` installed last (swapped whole: readers never lock)."""

    def __init__(self, addresses: Sequence[str], forwarder: Forwarder, port: int = 53, table: Table | None = None,
                 clients: Sequence[IPv4Network] | None = None):
        self.addresses, self.port, self.forwarder = list(addresses), port, forwarder
        # who may ask (None: anyone): a query from elsewhere gets nothing, a TCP connection
        # is closed at once — the gateway address is reachable from the underlay and from
        # other networks' containers, and forwarding for them made this an open resolver
        self.clients = None if clients is None else [*clients, *(IPv4Network(a) for a in self.addresses)]
        self.table = table or Table()
        self.rr = RoundRobin()
        self.stop_event = threading.Event()
        self._waker = Waker()  # the listener threads sleep on their socket and this: stop() wakes them
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns-forward")
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        # open TCP connections, in all and per source (serveloop.source_key): one container
        # must not shut TCP DNS for the others
        self._tcp_slots = ConnectionSlots(MAX_TCP, MAX_TCP_PER_SOURCE)
        self.stats = {"queries": 0, "answered": 0, "forwarded": 0, "dropped": 0}

    def set_table(self, table: Table) -> None:
        self.table = table

    def serves(self, peer: Any) -> bool:
        """Whether the source address ``peer`` (a socket address) may ask."""
        if self.clients is None:
            return True
        try:
            ip = IPv4Address(peer[0])
        except (ValueError, IndexError, TypeError):
            return False
        return any(ip in net for net in self.clients)

    # ---- answering (shared by UDP and TCP)
    def respond(self, data: bytes, limit: int | None) -> bytes | None:
        """The reply bytes to one query (``limit``: UDP size or None for TCP), computed
        here or by the forwarder (blocking: callers on the UDP thread use :meth:`_udp_one`)."""
        self.stats["queries"] += 1
        fast = fast_answer(self.table, data, self.rr)
        if fast is not None:
            self.stats["answered"] += 1
            return fast
        query, err = parse_query(data)
        if query is None:
            self.stats["dropped"] += err is None
            return err
        reply = local_answer(self.table, query, self.rr)
        if reply is None:
            self.stats["forwarded"] += 1
            reply = self.forwarder.forward(query)
        else:
            self.stats["answered"] += 1
        return fit(reply, udp_limit(query) if limit is not None else None)

    def start(self) -> None:
        """Bind every address (UDP and TCP) and start the threads; OSError when a bind fails
        (nothing is left open then)."""
        try:
            for addr in self.addresses:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socks.append(u)
                u.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                u.bind((addr, self.port))
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._socks.append(t)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                t.bind((addr, self.port))
                t.listen(64)
                t.setblocking(False)  # accept() after the selector said readable: never hangs
                self._spawn(f"dns-udp-{addr}", self._udp_loop, u)
                self._spawn(f"dns-tcp-{addr}", self._tcp_loop, t)
        except OSError:
            self.stop()
            raise

    def _spawn(self, name: str, fn: Callable, *args) -> None:
        th = threading.Thread(target=fn, args=args, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self) -> None:
        self.stop_event.set()
        self._waker.wake()  # the listener threads return from their selector now
        for th in self._threads:
            th.join(timeout=2)
        for s in self._socks:
            s.close()
        self._socks, self._threads = [], []
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._waker.close()

    def _udp_loop(self, sock: socket.socket) -> None:
        for _ in self._waker.readable(sock):  # sleeps (no timeout) until a datagram or stop()
            while not self.stop_event.is_set():  # every datagram queued, then sleep again
                try:
                    data, peer = sock.recvfrom(MAX_QUERY + 1, socket.MSG_DONTWAIT)
                except OSError:  # BlockingIOError: none left
                    break
                try:
                    self._udp_one(sock, data, peer)
                except Exception:  # noqa: BLE001 - one bad query never stops the server
                    log.exception("dns: answering a UDP query")

    def _udp_one(self, sock: socket.socket, data: bytes, peer) -> None:
        self.stats["queries"] += 1
        if not self.serves(peer):
            self.stats["dropped"] += 1
            return
        fast = fast_answer(self.table, data, self.rr)
        if fast is not None:
            self.stats["answered"] += 1
            sock.sendto(fast, peer)
            return
        query, err = parse_query(data)
        if query is None:
            self.stats["dropped"] += err is None
            if err is not None:
                sock.sendto(err, peer)
            return
        reply = local_answer(self.table, query, self.rr)
        if reply is not None:
            self.stats["answered"] += 1
            sock.sendto(fit(reply, udp_limit(query)), peer)
            return
        if not self._pending.acquire(blocking=False):
            sock.sendto(fit(Forwarder._servfail(query), udp_limit(query)), peer)
            return
        self.stats["forwarded"] += 1

        def job() -> None:
            try:
                sock.sendto(fit(self.forwarder.forward(query), udp_limit(query)), peer)
            except OSError:
                pass
            finally:
                self._pending.release()

        try:
            self._pool.submit(job)
        except RuntimeError:  # shutting down
            self._pending.release()

    def _tcp_loop(self, sock: socket.socket) -> None:
        for _ in self._waker.readable(sock):  # sleeps (no timeout) until a connection or stop()
            try:
                conn, peer = sock.accept()
            except BlockingIOError:  # the client went away before accept()
                continue
            except OSError:  # out of descriptors: the connection waits in the backlog
                if self.stop_event.wait(0.05):
                    return
                continue
            if not self.serves(peer):
                self.stats["dropped"] += 1
                conn.close()
                continue
            source = source_key(str(peer[0]))
            if not self._tcp_slots.try_acquire(source):
                conn.close()  # over the cap or this client's share: the client retries
                continue
            threading.Thread(target=self._tcp_conn, args=(conn, source), name="dns-tcp-conn", daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, source: str) -> None:
        try:
            deadline = time.monotonic() + TCP_IDLE * 4
            for _ in range(TCP_MAX_QUERIES):
                now = time.monotonic()
                if self.stop_event.is_set() or now > deadline:
                    return
                by = min(now + TCP_IDLE, deadline)  # the whole query, length prefix and all
                try:
                    size = struct.unpack("!H", _recv_exact(conn, 2, by))[0]
                    if size == 0 or size > MAX_QUERY:
                        return
                    data = _recv_exact(conn, size, by)
                except (OSError, ConnectionError, struct.error):
                    return
                out = self.respond(data, None)
                if out is None:
                    return
                conn.settimeout(TCP_IDLE)
                conn.sendall(struct.pack("!H", len(out)) + out)
        except Exception:  # noqa: BLE001
            log.exception("dns: TCP connection")
        finally:
            conn.close()
            self._tcp_slots.release(source)


__all__ = ["DnsServer", "Forwarder", "fast_answer", "local_answer", "parse_query", "tcp_exchange", "udp_exchange"]
