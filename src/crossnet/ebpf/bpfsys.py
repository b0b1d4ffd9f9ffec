"""The few bpf(2) commands crossnet needs, through ctypes (no library on PyPI for them):
open a pinned object (BPF_OBJ_GET), read a program's id (BPF_OBJ_GET_INFO_BY_FD), and
look up / update / delete map elements. Loading programs is bpftool's job
(crossnet.ebpf.host); the tc attach is pyroute2's."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

SYS_BPF = 321  # x86_64 (the only architecture crossnet's install builds for)
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 1, 2, 3
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ANY = 0
ATTR_SIZE = 128  # zero-padded union bpf_attr (the kernel accepts a shorter, zeroed tail)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    rc = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _attr(fmt: str, *values: int) -> ctypes.Array:
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def obj_get(path: str) -> int:
    """A new fd for the program or map pinned at path (OSError: ENOENT when not pinned)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _attr("=QII", ctypes.addressof(name), 0, 0))


def prog_id(fd: int) -> int:
    """The kernel's id of the program behind fd (what a tc filter reports)."""
    info = ctypes.create_string_buffer(64)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, len(info), ctypes.addressof(info)))
    return struct.unpack_from("=I", info, 4)[0]  # struct bpf_prog_info: type, id, ...


def _elem(cmd: int, fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    _bpf(cmd, _attr("=IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(value) if value is not None else 0, flags))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value for key (value_size bytes: for a per-CPU map, round_up(size, 8) × possible
    CPUs), or None when absent."""
    value = ctypes.create_string_buffer(value_size)
    try:
        _elem(BPF_MAP_LOOKUP_ELEM, fd, key, value)
    except FileNotFoundError:
        return None
    return value.raw


def map_update(fd: int, key: bytes, value: bytes) -> None:
    _elem(BPF_MAP_UPDATE_ELEM, fd, key, ctypes.create_string_buffer(value, len(value)), BPF_ANY)


def map_delete(fd: int, key: bytes) -> bool:
    """Delete key; False when it was not there."""
    try:
        _elem(BPF_MAP_DELETE_ELEM, fd, key, None)
    except FileNotFoundError:
        return False
    return True


def possible_cpus(text: str | None = None) -> int:
    """Number of possible CPUs (/sys/devices/system/cpu/possible, e.g. "0-3" or "0,2-5"):
    the number of slots of a per-CPU map value."""
    if text is None:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read()
    n = 0
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


BPF_MAP_GET_NEXT_KEY = 4


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a (hash) map."""
    keys: list[bytes] = []
    prev = None
    while True:
        nxt = ctypes.create_string_buffer(key_size)
        k = ctypes.create_string_buffer(prev, key_size) if prev is not None else None
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, _attr("=IIQQ", fd, 0, ctypes.addressof(k) if k is not None else 0,
                                             ctypes.addressof(nxt)))
        except FileNotFoundError:
            return keys
        prev = nxt.raw
        keys.append(prev)
