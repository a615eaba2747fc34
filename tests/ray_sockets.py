"""Test helpers for Ray's processes and their sockets (no Ray import: psutil and the process table only)."""

from __future__ import annotations

import ipaddress
import socket

import psutil


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``: gRPC's
    dual-stack listener bound to 127.0.0.1)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tree(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of a process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = " ".join(p.cmdline())[:160]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def listening(pids) -> list[tuple[str, int, int, str]]:
    """Every TCP socket in LISTEN state (and every bound UDP socket) of ``pids``.

    Returns:
        ``[(ip, port, pid, command line), ...]`` sorted by port.
    """
    pids = dict(pids) if isinstance(pids, dict) else {p: "" for p in pids}
    rows = []
    for c in psutil.net_connections("inet"):
        if c.pid not in pids or not c.laddr:
            continue
        if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
            continue
        rows.append((c.laddr.ip, c.laddr.port, c.pid, pids[c.pid]))
    return sorted(rows, key=lambda r: r[1])
