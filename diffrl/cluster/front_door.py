"""The reward service's front door: a small asyncio TCP guard on the public address that bounds what a connection can
hold before its request reaches Serve's HTTP proxy (which listens on loopback behind it).

Serve's uvicorn proxy starts its keep-alive timer only after a response, so on its own a connection that never sends
a request line, or trickles its headers a byte at a time (slowloris), holds a socket and a task forever. Here, per
connection (limits from `reward_service.Limits`):
- a new connection, and a kept-alive one after its response, must start a request within `idle_timeout_s` (else it
  is closed);
- a request's headers must be complete within `header_timeout_s` of its first byte (408) and fit in
  `max_header_bytes` (431); a malformed Content-Length is a 400;
- the body is forwarded as it arrives (the service answers a slow one with its own 408 after `body_timeout_s`);
  the connection is closed if the body is still incomplete a few seconds later;
- at most `max_connections_per_client` connections are open at once from one client address, and
  `max_connections` in all (503 beyond): a client that holds its share of idle connections cannot lock others out
  (idle connections are cheap here: a task and two sockets each);
- while the service behind the door is not listening (starting, or gone), requests get a 502.
The answer is then relayed untouched; waiting for it is bounded by Serve's `request_timeout_s`. A refused request's
answer is followed by a half-close and a short linger that drops the client's remaining input.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http import HTTPStatus

HEAD_END = b"\r\n\r\n"
BODY_GRACE_S = 5.0  # past body_timeout_s: the service has answered 408 by then
REFUSE_LINGER_S, REFUSE_DRAIN_BYTES = 1.0, 16 << 20  # after a refusal: how long / how much input is read and dropped


class Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def body_length(head: bytes) -> "int | None":
    """The request body's length from its headers; None for a chunked body (passed through; the service answers it
    with 411)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if not value.isdigit():
                raise Refusal(400, f"Content-Length {value.decode(errors='replace')!r} is not a number")
            length = int(value)
    return length


def _allow_open_files(wanted: int) -> None:
    """Raise this process's soft open-files limit towards `wanted` (up to the hard limit), so that the connection
    limits, not the file-descriptor limit, decide what is refused."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _answer(status: int, reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class FrontDoor:
    """Listens on host:port and relays each connection to `upstream` (host, port) under the limits above."""

    def __init__(self, host: str, port: int, upstream: "tuple[str, int]", limits) -> None:
        self.host, self.port, self.upstream, self.limits = host, port, upstream, limits
        self.open_connections = 0
        self.per_client: dict[str, int] = {}  # open connections per client address
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: "BaseException | None" = None
        self._server: "asyncio.base_events.Server | None" = None

    def start(self) -> "FrontDoor":
        _allow_open_files(2 * self.limits.max_connections + 256)  # each connection holds two sockets
        threading.Thread(target=self._run, name=f"front-door-{self.port}", daemon=True).start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop listening, cancel the open connections (each closes its sockets on the way out), stop the loop."""
        if self._server is not None:  # else it never listened and its loop is not running
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.call_soon(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, self.host, self.port))
        except OSError as err:
            self._error = OSError(f"serve-reward: cannot listen on {self.host}:{self.port}: {err.strerror or err}")
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = (writer.get_extra_info("peername") or ("?",))[0]
        limits = self.limits
        refusal = None
        if self.per_client.get(client, 0) >= limits.max_connections_per_client:
            refusal = (f"client {client} has {limits.max_connections_per_client} connections open; the per-client "
                       f"limit is reached")
        elif self.open_connections >= limits.max_connections:
            refusal = f"{limits.max_connections} connections are open; the limit is reached"
        if refusal is not None:
            writer.write(_answer(503, refusal))
            await _close(writer)
            return
        self.open_connections += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        upstream: "asyncio.StreamWriter | None" = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self.upstream)
            answered = asyncio.Event()
            answered.set()  # the idle timer of a new connection runs from its opening
            relay = asyncio.ensure_future(_relay(up_reader, writer, answered))
            requests = asyncio.ensure_future(self._requests(reader, writer, upstream, answered))
            done, _ = await asyncio.wait({relay, requests}, return_when=asyncio.FIRST_COMPLETED)
            if requests in done and requests.exception() is None and not answered.is_set():
                await asyncio.wait({relay}, timeout=self.limits.request_timeout_s)  # the client stopped sending
            for task in (relay, requests):
                task.cancel()
        except OSError as err:
            if upstream is None:  # the service behind the door is not (yet) listening
                await _refuse(reader, writer, 502, f"the reward service is unreachable: {err.strerror or err}")
        finally:
            self.open_connections -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
            for stream in (upstream, writer):
                if stream is not None:
                    await _close(stream)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        upstream: asyncio.StreamWriter, answered: asyncio.Event) -> None:
        limits, loop, buffer = self.limits, asyncio.get_running_loop(), b""
        while True:
            await answered.wait()  # no idle timer while the service works on the last request
            if not buffer:
                try:
                    buffer = await asyncio.wait_for(reader.read(1 << 16), limits.idle_timeout_s)
                except asyncio.TimeoutError:
                    return  # idle: closed without an answer, as uvicorn closes idle keep-alive connections
                if not buffer:
                    return
            try:
                deadline = loop.time() + limits.header_timeout_s
                while HEAD_END not in buffer[:limits.max_header_bytes + len(HEAD_END)]:
                    if len(buffer) > limits.max_header_bytes:
                        raise Refusal(431, f"request headers exceed {limits.max_header_bytes} bytes")
                    try:
                        chunk = await asyncio.wait_for(reader.read(1 << 16), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        raise Refusal(408, f"the request headers did not arrive within "
                                           f"{limits.header_timeout_s:g} s") from None
                    if not chunk:
                        return
                    buffer += chunk
                end = buffer.index(HEAD_END) + len(HEAD_END)
                head, buffer = buffer[:end], buffer[end:]
                length = body_length(head)
            except Refusal as refusal:
                await _refuse(reader, writer, refusal.status, refusal.reason)
                raise
            answered.clear()
            upstream.write(head)
            if length is None:  # chunked: relayed until the client or the service closes
                upstream.write(buffer)
                while chunk := await asyncio.wait_for(reader.read(1 << 16), limits.idle_timeout_s):
                    upstream.write(chunk)
                return
            body, buffer = buffer[:length], buffer[length:]
            upstream.write(body)
            remaining, deadline = length - len(body), loop.time() + limits.body_timeout_s + BODY_GRACE_S
            while remaining > 0:
                chunk = await asyncio.wait_for(reader.read(min(remaining, 1 << 16)), max(0.0, deadline - loop.time()))
                if not chunk:
                    return
                upstream.write(chunk)
                remaining -= len(chunk)
            await upstream.drain()


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter, answered: asyncio.Event) -> None:
    while chunk := await source.read(1 << 16):
        sink.write(chunk)
        await sink.drain()
        answered.set()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    """Answer `status` and half-close, then read and drop what the client still sends for up to REFUSE_LINGER_S (at
    most REFUSE_DRAIN_BYTES, 64 KiB at a time): closing a socket with unread input sends a reset, which can destroy
    the answer before the client reads it."""
    try:
        writer.write(_answer(status, reason))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        loop, dropped = asyncio.get_running_loop(), 0
        deadline = loop.time() + REFUSE_LINGER_S
        while dropped < REFUSE_DRAIN_BYTES and (left := deadline - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(1 << 16), left)
            if not chunk:
                break
            dropped += len(chunk)
    except (OSError, asyncio.TimeoutError):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError):
        pass
