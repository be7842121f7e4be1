"""How much a connection lets the server send ahead of what we have read: its receive window.

Linux grows a socket's receive buffer up to `net.ipv4.tcp_rmem`'s maximum (32 MiB on many
machines) whenever the reader is slower than the link, which on a fast, near path (loopback,
a LAN mirror) it always is: the CPU that hashes and writes is the limit there. Every byte in
that buffer was already sent by the server and is thrown away when the process is killed, and
when a connection stops early because another one took the rest of its piece (tail stealing,
transfer/segments.py). Sixteen connections with full buffers lose hundreds of MiB per kill.

The window a path needs to run at full speed is its bandwidth-delay product, so a connection
whose measured round trip (the handshake's, from TCP_INFO) is short gets a receive buffer of
rtt x MAX_RATE, at least MIN_WINDOW: 256 KiB on loopback, where that is still far more than one
round trip's worth at any rate. A longer path (a real CDN: milliseconds) keeps Linux's
autotuning, which is what it needs. Only an optimisation: where the calls are unavailable
nothing changes. A clamped connection is `near_path` (Connection, Response): a segmented
transfer then also asks for its pieces a few MiB at a time, which bounds what the server
queues in its own send buffer (segment_setup.py `NEAR_REQUEST`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

__all__ = ["MAX_RATE", "MIN_WINDOW", "clamp_receive_window", "window_for"]

MAX_RATE = 2_500_000_000  # bytes/s one connection could ever need (20 Gb/s)
MIN_WINDOW = 256 << 10
_AUTOTUNE_ABOVE = 4 << 20  # a window this large is left to Linux's autotuning
_TCPI_RTT = 68  # offset of tcpi_rtt (microseconds) in struct tcp_info
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def window_for(rtt_us: int) -> int | None:
    """The receive buffer for a path of this round trip, or None to leave it to Linux."""
    if rtt_us <= 0:
        return None
    window = max(MIN_WINDOW, rtt_us * MAX_RATE // 1_000_000)
    return window if window < _AUTOTUNE_ABOVE else None


def clamp_receive_window(sock: Any) -> int | None:
    """Set `sock`'s receive buffer from its round trip (see the module docstring); the size
    set, or None when it is left alone."""
    if sock is None or _TCP_INFO is None:
        return None
    with contextlib.suppress(OSError, struct.error, AttributeError):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
        (rtt_us,) = struct.unpack_from("<I", info, _TCPI_RTT)
        window = window_for(rtt_us)
        if window is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
        return window
    return None
