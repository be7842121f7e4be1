"""A fault-injecting TCP proxy for loopback tests: a flaky link between a client and an origin.

`ChaosProxy(upstream, seed=..., config=ChaosConfig(...))` listens on 127.0.0.1 and relays every
connection to `upstream` byte for byte, except that each connection may be given one fault,
applied to the bytes going back to the client (the response side, headers included):

    reset       forward `at` bytes, then abort with a TCP RST
    truncate    forward `at` bytes, then close cleanly (FIN) in the middle of the response
    stall       forward `at` bytes, send nothing for `seconds`, then carry on
    drip        forward `at` bytes, then trickle at `rate` bytes/s for `seconds`, then carry on
    flip        XOR the byte at offset `at` with a non-zero `mask`, forward everything
    delay_head  hold the first response bytes back for `seconds`

Replay. The plan of a connection is a pure function (`plan_for`) of the seed and of its first
request: method, path without the query string (signed URLs carry a timestamp), the `Range`
header, and how many times that same request was seen before on this proxy. So one seed gives the
same faults to the same requests whatever the interleaving of concurrent connections, and a
failing run is replayed by running it again with its seed. `log` keeps one `ConnectionRecord` per
connection (what was planned, whether it fired, the byte counts), `describe()` prints it.

The proxy does not parse HTTP beyond that first request head: keep-alive connections carry on
transparently, and `at` counts every response byte on the connection. A plan whose offset is never
reached simply does not fire (`fired=False` in the log). `config` may be swapped at any time
(e.g. `ChaosConfig()` for a calm finish); it applies to connections accepted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field, fields
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

__all__ = [
    "FAULT_KINDS",
    "ChaosConfig",
    "ChaosProxy",
    "ConnectionPlan",
    "ConnectionRecord",
    "FaultKind",
    "plan_for",
]

FaultKind = Literal["reset", "truncate", "stall", "drip", "flip", "delay_head"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)

_CHUNK: Final = 64 << 10
_HEAD_LIMIT: Final = 64 << 10
_DRIP_TICK: Final = 0.05  # seconds between drips


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """Per-connection fault probabilities (they must add up to at most 1; the rest of the
    connections pass untouched) and the ranges their parameters are drawn from."""

    reset: float = 0.0
    truncate: float = 0.0
    stall: float = 0.0
    drip: float = 0.0
    flip: float = 0.0
    delay_head: float = 0.0
    cut_bytes: tuple[int, int] = (0, 4 << 20)  # response bytes before a fault takes effect
    stall_seconds: tuple[float, float] = (0.5, 3.0)
    drip_seconds: tuple[float, float] = (0.5, 2.0)
    drip_rate: tuple[float, float] = (16 << 10, 256 << 10)  # bytes per second
    head_delay: tuple[float, float] = (0.2, 2.0)

    def __post_init__(self) -> None:
        probabilities = [self.probability(kind) for kind in FAULT_KINDS]
        if any(not 0.0 <= p <= 1.0 for p in probabilities) or sum(probabilities) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities must be in [0, 1] and sum to <= 1: {self}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and not 0 <= value[0] <= value[1]:
                raise ValueError(f"{f.name} must be (low, high) with 0 <= low <= high")
        if self.drip_rate[0] <= 0:
            raise ValueError("drip_rate must be > 0")

    def probability(self, kind: FaultKind) -> float:
        value: float = getattr(self, kind)
        return value

    @property
    def calm(self) -> bool:
        return all(self.probability(kind) == 0.0 for kind in FAULT_KINDS)


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """What one connection will suffer; `kind=None` means nothing."""

    kind: FaultKind | None
    at: int = 0  # response byte offset (reset, truncate, stall, drip, flip)
    seconds: float = 0.0  # stall, drip, delay_head
    rate: float = 0.0  # drip, bytes per second
    mask: int = 0  # flip

    def __str__(self) -> str:
        if self.kind is None:
            return "pass"
        if self.kind in ("reset", "truncate"):
            return f"{self.kind}@{self.at}"
        if self.kind == "flip":
            return f"flip@{self.at}^{self.mask:#04x}"
        if self.kind == "stall":
            return f"stall@{self.at} {self.seconds:.2f}s"
        if self.kind == "drip":
            return f"drip@{self.at} {self.rate:.0f}B/s {self.seconds:.2f}s"
        return f"delay_head {self.seconds:.2f}s"


def plan_for(seed: int, key: str, config: ChaosConfig) -> ConnectionPlan:
    """The plan for the connection whose first request is `key` (see the module docstring).
    Every parameter is drawn whatever the kind, so a kind's draws never shift another's."""
    rng = random.Random(f"{seed}|{key}")
    draw = rng.random()
    at = rng.randint(*config.cut_bytes)
    stall = rng.uniform(*config.stall_seconds)
    drip_seconds = rng.uniform(*config.drip_seconds)
    rate = rng.uniform(*config.drip_rate)
    head = rng.uniform(*config.head_delay)
    mask = rng.randint(1, 255)
    kind: FaultKind | None = None
    edge = 0.0
    for candidate in FAULT_KINDS:
        edge += config.probability(candidate)
        if draw < edge:
            kind = candidate
            break
    if kind is None:
        return ConnectionPlan(None)
    if kind == "delay_head":
        return ConnectionPlan(kind, seconds=head)
    if kind == "stall":
        return ConnectionPlan(kind, at=at, seconds=stall)
    if kind == "drip":
        return ConnectionPlan(kind, at=at, seconds=drip_seconds, rate=rate)
    if kind == "flip":
        return ConnectionPlan(kind, at=at, mask=mask)
    return ConnectionPlan(kind, at=at)


@dataclass(slots=True)
class ConnectionRecord:
    """One connection through the proxy. Filled in as it goes; final once `ended` is set."""

    id: int
    started: float  # epoch seconds
    key: str = ""  # the first request, as used for the plan ("" if none arrived)
    plan: ConnectionPlan = field(default_factory=lambda: ConnectionPlan(None))
    fired: bool = False  # the fault took effect
    bytes_up: int = 0  # client -> origin
    bytes_from_origin: int = 0  # read from the origin
    bytes_down: int = 0  # forwarded to the client
    outcome: str = "open"
    ended: float | None = None

    def __str__(self) -> str:
        fired = "" if self.plan.kind is None else (" FIRED" if self.fired else " (not reached)")
        return (
            f"#{self.id} {self.key or '<no request>'}: {self.plan}{fired};"
            f" {self.bytes_down}/{self.bytes_from_origin} bytes down, {self.outcome}"
        )


class _Closed(Exception):
    """The downstream pump ended the connection on purpose (reset, truncate)."""


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (`http://host:port` or `host:port`)."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int,
        config: ChaosConfig | None = None,
        port: int = 0,
        head_timeout: float = 30.0,
    ) -> None:
        target = upstream if "//" in upstream else f"//{upstream}"
        parts = urlsplit(target)
        if not parts.hostname or parts.port is None:
            raise ValueError(f"upstream must name a host and a port: {upstream!r}")
        self.upstream: tuple[str, int] = (parts.hostname, parts.port)
        self.seed = seed
        self.config = config or ChaosConfig()
        self.log: list[ConnectionRecord] = []
        self._port = port
        self._head_timeout = head_timeout
        self._seen: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._address: tuple[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("ChaosProxy is not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._connected, "127.0.0.1", self._port, limit=_HEAD_LIMIT
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self._address = (host, port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reporting -------------------------------------------------------------------------------

    def fired(self, kind: FaultKind | None = None) -> list[ConnectionRecord]:
        """Connections whose fault took effect (of one kind, or any)."""
        return [r for r in self.log if r.fired and (kind is None or r.plan.kind == kind)]

    def summary(self) -> dict[str, int]:
        """How many connections, and how many faults of each kind took effect."""
        counts = {"connections": len(self.log)}
        for kind in FAULT_KINDS:
            counts[kind] = len(self.fired(kind))
        return counts

    def describe(self, *, faulted_only: bool = True) -> str:
        """The log, one line per connection: what to read next to the seed when a run failed."""
        lines = [f"ChaosProxy seed={self.seed} upstream={self.upstream[0]}:{self.upstream[1]}"]
        lines += [str(r) for r in self.log if not faulted_only or r.plan.kind is not None]
        return "\n".join(lines)

    # -- one connection --------------------------------------------------------------------------

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts a task we own (close() cancels and awaits it), rather than
        # a coroutine callback whose task asyncio owns and reports oddly when cancelled.
        record = ConnectionRecord(id=len(self.log) + 1, started=time.time())
        self.log.append(record)
        task = asyncio.get_running_loop().create_task(self._accept(reader, writer, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: ConnectionRecord
    ) -> None:
        try:
            await self._serve(reader, writer, record)
        except asyncio.CancelledError:
            record.outcome = "proxy closed"
            _abort(writer)
            raise
        finally:
            record.ended = time.time()
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: ConnectionRecord
    ) -> None:
        try:
            async with asyncio.timeout(self._head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            record.outcome = "no request head"
            return
        record.key = self._key(head)
        record.plan = plan = plan_for(self.seed, record.key, self.config)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            record.outcome = f"origin unreachable: {exc}"
            _abort(writer)
            return
        try:
            up_writer.write(head)
            record.bytes_up += len(head)
            upward = asyncio.ensure_future(self._pump_up(reader, up_writer, record))
            try:
                record.outcome = await self._pump_down(up_reader, writer, plan, record)
            finally:
                upward.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upward
        finally:
            _abort(up_writer)

    def _key(self, head: bytes) -> str:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0] or rest
        path = target.split("?", 1)[0]
        ranges = [
            line.partition(":")[2].strip()
            for line in lines[1:]
            if line.partition(":")[0].strip().lower() == "range"
        ]
        base = f"{method} {path} {ranges[0] if ranges else '-'}"
        seen = self._seen.get(base, 0)
        self._seen[base] = seen + 1
        return f"{base} #{seen}"

    @staticmethod
    async def _pump_up(
        reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, record: ConnectionRecord
    ) -> None:
        """Client to origin, untouched. The client's EOF is passed on as ours."""
        try:
            while data := await reader.read(_CHUNK):
                up_writer.write(data)
                record.bytes_up += len(data)
                await up_writer.drain()
            if up_writer.can_write_eof():
                up_writer.write_eof()
        except OSError:
            return

    async def _pump_down(
        self,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        plan: ConnectionPlan,
        record: ConnectionRecord,
    ) -> str:
        """Origin to client, with the plan applied; returns how the connection ended."""
        kind = plan.kind
        pending_head_delay = kind == "delay_head"
        drip_until: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await up_reader.read(_CHUNK)
                if not data:
                    await _flush(writer)
                    return "origin closed"
                record.bytes_from_origin += len(data)
                if pending_head_delay:
                    pending_head_delay = False
                    record.fired = True
                    await asyncio.sleep(plan.seconds)
                pos = record.bytes_down
                if (
                    kind in ("reset", "truncate", "stall", "drip", "flip")
                    and not record.fired
                    and pos + len(data) > plan.at
                ):
                    record.fired = True
                    cut = plan.at - pos
                    if kind == "flip":
                        changed = bytearray(data)
                        changed[cut] ^= plan.mask
                        data = bytes(changed)
                    else:
                        await self._send(writer, data[:cut], record)
                        data = data[cut:]
                        if kind == "reset":
                            await _flush(writer)
                            _reset(writer)
                            return "reset by chaos"
                        if kind == "truncate":
                            await _flush(writer)
                            writer.close()
                            return "truncated by chaos"
                        if kind == "stall":
                            await asyncio.sleep(plan.seconds)
                        else:
                            drip_until = loop.time() + plan.seconds
                if drip_until is not None and loop.time() < drip_until:
                    await self._drip(writer, data, plan.rate, drip_until, record)
                else:
                    await self._send(writer, data, record)
        except (ConnectionError, OSError):
            return "client went away"

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes, record: ConnectionRecord) -> None:
        if data:
            writer.write(data)
            record.bytes_down += len(data)
            await writer.drain()

    async def _drip(
        self,
        writer: asyncio.StreamWriter,
        data: bytes,
        rate: float,
        until: float,
        record: ConnectionRecord,
    ) -> None:
        loop = asyncio.get_running_loop()
        piece = max(1, int(rate * _DRIP_TICK))
        view = memoryview(data)
        while view:
            if loop.time() >= until:
                await self._send(writer, bytes(view), record)
                return
            await self._send(writer, bytes(view[:piece]), record)
            view = view[piece:]
            await asyncio.sleep(_DRIP_TICK)


async def _flush(writer: asyncio.StreamWriter) -> None:
    """Until what we wrote has reached the kernel (bounded: at most ~1 s)."""
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
    transport = writer.transport
    for _ in range(500):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.002)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()
