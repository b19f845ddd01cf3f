"""Ports and probes on 127.0.0.1 with the standard library only: free ports, TCP, PING, GET."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tools.devstack.base import HOST, DevstackError

_handed_out: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` now, never one this process handed out before."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise DevstackError("no free TCP port found")


def port_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if the Redis server at host:port answers PING with PONG (no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking GET; returns (status, body). Raises OSError when nothing answers."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def async_http_get(
    host: str, port: int, path: str, timeout_s: float = 2.0
) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on asyncio streams; returns (status, body). Raises OSError."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer from {host}:{port}{path}: {raw[:80]!r}")
    return int(status_line[1]), body


def free_udp_port(host: str = HOST, *, even: bool = False) -> int:
    """A UDP port free on `host` now; `even`: an even one with the port two above free too
    (an RTP pair, as SIPp's -mp wants)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if even:
            port &= ~1
        if port in _handed_out or port + 2 > 65535:
            continue
        try:
            socks: list[socket.socket] = []
            for p in (port, port + 2) if even else (port,):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _handed_out.add(port)
        return port
    raise DevstackError("no free UDP port found")


def udp_port_bound(host: str, port: int) -> bool:
    """True if something holds UDP host:port (binding it ourselves fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
