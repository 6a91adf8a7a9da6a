"""The HTTP server around `EmulatorCore`: aiohttp on a loopback socket.

Two ways to run it: `Emulator` (a background thread with its own event loop, for tests, the
demo and benchmarks) and `main_blocking` (the foreground, until SIGINT/SIGTERM, for the CLI).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from aiohttp import web

from .core import RESET, TRUNCATE, Answer, EmulatorCore
from .fleet import EmulatorError, Fleet, FleetError, load_fleet

FleetSource: TypeAlias = "Fleet | Mapping[str, Any] | str | Path"
OnReady = Callable[[str], None]
T = TypeVar("T")

BACKLOG = 2048  # benchmarks open many connections at once
SHUTDOWN_TIMEOUT = 0.5  # seconds given to in-flight requests when stopping
CLIENT_MAX_SIZE = 8 * 1024 * 1024  # big enough to answer PayloadOverLimit instead of HTTP 413
CONTROL_TIMEOUT = 30.0
LOGIN_PATH = (
    "/api/exploreropen/appapi"  # seconds to wait for the server thread to run a control call
)


# --------------------------------------------------------------------------- the aiohttp app


def request_line(body: bytes, status: int, answer: bytes, elapsed: float) -> str:
    """One access-log line: action, device, outcome, time. Never a token or a password (the
    AccessToken is shown as ***), never the payload."""
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    fields = request if isinstance(request, dict) else {}
    action = str(fields.get("Action") or "?")
    device = f"{fields.get('ProductId') or '-'}/{fields.get('DeviceName') or '-'}"
    who = "" if action == "AppGetToken" else " AccessToken=***" if "AccessToken" in fields else ""
    code = _answer_code(answer)
    what = device if fields.get("ProductId") else "-"
    return f"{action} {what}{who} -> {status} {code} {elapsed * 1000:.0f}ms"


def _answer_code(answer: bytes) -> str:
    try:
        doc = json.loads(answer)
    except ValueError:
        return "(not JSON)"
    response = doc.get("Response", doc) if isinstance(doc, dict) else {}
    error = response.get("Error") if isinstance(response, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    return str(code) if code else "OK"


class _Handlers:
    def __init__(self, core: EmulatorCore, on_request: OnReady | None = None) -> None:
        self.core = core
        self.on_request = on_request

    async def publish(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        response = await self._publish(request, body)
        if self.on_request is not None:
            body_sent = response.body if isinstance(response, web.Response) else None
            answer = body_sent if isinstance(body_sent, bytes) else b""
            line = request_line(body, response.status, answer, time.monotonic() - started)
            self.on_request(line)
        return response

    async def _publish(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if is_app_api(request.path):
            answer = self.core.respond_login(body)
            return web.Response(body=answer.body, content_type=answer.content_type)
        answer = await self.core.respond(body)
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        if answer.action == RESET:
            return _reset_connection(request)
        if answer.action == TRUNCATE:
            return await _truncated(request, answer)
        return web.Response(
            body=answer.body, status=answer.status, content_type=answer.content_type
        )

    async def stats(self, request: web.Request) -> web.Response:
        include_log = request.query.get("log", "1").lower() not in ("0", "false", "no")
        return web.json_response(self.core.stats(include_log))

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.fleet.to_dict())

    async def configure(self, request: web.Request) -> web.Response:
        try:
            partial = _json_object(await request.read())
            fleet = self.core.configure(partial)
        except FleetError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "fleet": fleet.to_dict()})

    async def reset(self, request: web.Request) -> web.Response:
        try:
            options = _json_object(await request.read(), empty_ok=True)
        except FleetError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.core.reset(memory=bool(options.get("memory", False)))
        return web.json_response({"ok": True})

    async def memory(self, request: web.Request) -> web.Response:
        """`{"device": "P/d", "payload": "..." | {...} | null}`: set what a device holds."""
        try:
            body = _json_object(await request.read())
            key, payload = memory_args(body.get("device"), body.get("payload"))
        except FleetError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.core.set_memory(key, payload)
        return web.json_response({"ok": True})

    async def revoke(self, request: web.Request) -> web.Response:
        """Every token issued by AppGetToken becomes invalid (as after a logout)."""
        return web.json_response({"ok": True, "revoked": self.core.login_desk.revoke()})

    async def unknown(self, request: web.Request) -> web.Response:
        routes = "GET stats, GET/POST config, POST reset, POST memory, POST revoke"
        error = f"unknown control endpoint {request.method} {request.path} ({routes})"
        return web.json_response({"error": error}, status=404)


def is_app_api(path: str) -> bool:
    """The app API (before login: AppGetToken) is any path whose last segment is `appapi`,
    such as /api/exploreropen/appapi; every other path is the token API."""
    return path.rstrip("/").rsplit("/", 1)[-1] == "appapi"


def _reset_connection(request: web.Request) -> web.StreamResponse:
    """Abort the connection with a TCP RST (SO_LINGER 0): the client gets no response."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never written: the connection is gone


async def _truncated(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Headers announce the whole body; half of it is sent, then the connection closes."""
    response = web.StreamResponse(status=answer.status)
    response.content_type = answer.content_type
    response.content_length = len(answer.body)
    await response.prepare(request)
    await response.write(answer.body[: len(answer.body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN
    return response


def _json_object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise FleetError("<request>: the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise FleetError("<request>: the body must be a JSON object")
    return data


def memory_args(key: Any, payload: Any) -> tuple[str, str | None]:
    """Check `set_memory` arguments; a mapping or list payload becomes canonical JSON."""
    if not isinstance(key, str) or len(key.split("/")) != 2 or "" in key.split("/"):
        raise FleetError(f"<request>: device {key!r} is not 'ProductId/DeviceName'")
    if payload is None or isinstance(payload, str):
        return key, payload
    if isinstance(payload, (Mapping, list)):
        return key, json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    raise FleetError("<request>: payload must be a string, a mapping, a list or null")


def build_app(core: EmulatorCore, on_request: OnReady | None = None) -> web.Application:
    """Control endpoints under /_emulator/, and the API on POST to any other path;
    `on_request` gets one line per API request (`request_line`)."""
    handlers = _Handlers(core, on_request)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.router.add_get("/_emulator/stats", handlers.stats)
    app.router.add_get("/_emulator/config", handlers.get_config)
    app.router.add_post("/_emulator/config", handlers.configure)
    app.router.add_post("/_emulator/reset", handlers.reset)
    app.router.add_post("/_emulator/memory", handlers.memory)
    app.router.add_post("/_emulator/revoke", handlers.revoke)
    app.router.add_route("*", "/_emulator/{tail:.*}", handlers.unknown)
    app.router.add_post("/{tail:.*}", handlers.publish)
    return app


# --------------------------------------------------------------------------- sockets


def bind(host: str, port: int, allow_remote: bool = False) -> socket.socket:
    """A listening socket; a non-loopback host is refused unless `allow_remote`."""
    addresses = _addresses(host, port)
    if not allow_remote and not all(address.is_loopback for address in addresses):
        raise EmulatorError(
            f"refusing to listen on {host!r}: the emulator is a test tool and binds only to "
            "loopback addresses such as 127.0.0.1 (pass allow_remote=True to override)"
        )
    address = min(addresses, key=lambda item: item.version)  # IPv4 first
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        return socket.create_server((str(address), port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise EmulatorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise EmulatorError(f"cannot resolve the host {host!r}: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def _serve_socket(
    core: EmulatorCore,
    sock: socket.socket,
    on_ready: OnReady | None = None,
    stop: asyncio.Event | None = None,
    on_request: OnReady | None = None,
) -> None:
    """Serve on `sock` until `stop` is set (or forever, until cancelled)."""
    url = url_of(sock)
    runner = web.AppRunner(
        build_app(core, on_request),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        if on_ready is not None:
            on_ready(url)
        await (stop if stop is not None else asyncio.Event()).wait()
    finally:
        await runner.cleanup()
        sock.close()


# --------------------------------------------------------------------------- foreground


async def serve(
    fleet: FleetSource,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    on_ready: OnReady | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve in the running event loop until cancelled."""
    core = EmulatorCore(load_fleet(fleet))
    await _serve_socket(core, bind(host, port, allow_remote), on_ready)


def main_blocking(
    fleet: FleetSource,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: OnReady | None = None,
    *,
    allow_remote: bool = False,
    on_request: OnReady | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; call `on_ready(url)` once listening and
    `on_request(line)` for every API request.

    Raises FleetError for a bad fleet and EmulatorError when it cannot listen.
    """
    core = EmulatorCore(load_fleet(fleet))
    sock = bind(host, port, allow_remote)
    try:
        asyncio.run(_serve_until_signal(core, sock, on_ready, on_request))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def run_forever(
    fleet: FleetSource, host: str = "127.0.0.1", port: int = 8080, *, allow_remote: bool = False
) -> None:
    """`main_blocking` without a ready callback."""
    main_blocking(fleet, host, port, None, allow_remote=allow_remote)


async def _serve_until_signal(
    core: EmulatorCore,
    sock: socket.socket,
    on_ready: OnReady | None,
    on_request: OnReady | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    await _serve_socket(core, sock, on_ready, stop, on_request)


# --------------------------------------------------------------------------- background


class Emulator:
    """The emulator in a background thread with its own event loop.

    >>> with Emulator({"auto_devices": True}) as emu:  # doctest: +SKIP
    ...     httpx.post(emu.url, json={...})
    ...     emu.stats()["requests_total"]
    """

    def __init__(
        self,
        fleet: FleetSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_remote: bool = False,
    ) -> None:
        self._core = EmulatorCore(load_fleet(fleet))
        self._host = host
        self._port = port
        self._allow_remote = allow_remote
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> Emulator:
        """Listen and serve in a background thread; returns once requests are accepted."""
        if self._thread is not None:
            raise EmulatorError("the emulator is already running")
        sock = bind(self._host, self._port, self._allow_remote)
        self._url = url_of(sock)
        self._ready.clear()
        self._error = None
        thread = threading.Thread(target=self._run, args=(sock,), name="emulator", daemon=True)
        thread.start()
        self._ready.wait()
        if self._error is not None:
            thread.join()
            raise self._error
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop serving (in-flight requests get SHUTDOWN_TIMEOUT seconds) and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        self._thread = self._loop = self._stop = None

    def __enter__(self) -> Emulator:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # reported by start() when it happens before ready
            if not self._ready.is_set():
                self._error = exc
        finally:
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await _serve_socket(self._core, sock, lambda _url: self._ready.set(), self._stop)

    # ----------------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """The API endpoint, e.g. http://127.0.0.1:PORT/."""
        if self._url is None:
            raise EmulatorError("the emulator has not been started")
        return self._url

    @property
    def login_url(self) -> str:
        """The app API endpoint for AppGetToken, e.g. http://127.0.0.1:PORT/api/exploreropen/appapi."""
        return self.url + LOGIN_PATH.lstrip("/")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    @property
    def fleet(self) -> Fleet:
        return self._core.fleet

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Emulator {self._url or self._host} {state}>"

    # ----------------------------------------------------------------------- control

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """Same dict as GET /_emulator/stats, taken on the server thread."""
        return self._on_loop(lambda: self._core.stats(include_log))

    def reset(self, memory: bool = False) -> None:
        """Clear counters, logs and injected-failure counters (`memory`: device memory too)."""
        self._on_loop(lambda: self._core.reset(memory))

    def configure(self, partial: Mapping[str, Any]) -> Fleet:
        """Change fleet settings and device behaviours at runtime; raises FleetError."""
        return self._on_loop(lambda: self._core.configure(partial))

    def set_memory(self, key: str, payload: str | Mapping[str, Any] | list[Any] | None) -> None:
        """Make a device hold another config (None: forget it), as if changed behind
        rrpcsync's back: a drift probe then reports it (POST /_emulator/memory)."""
        checked_key, text = memory_args(key, payload)
        self._on_loop(lambda: self._core.set_memory(checked_key, text))

    def revoke_tokens(self) -> int:
        """Make every token issued by AppGetToken invalid; returns how many there were."""
        return self._on_loop(self._core.login_desk.revoke)

    def issued_tokens(self) -> list[str]:
        """The tokens AppGetToken issued (tests look for them where they must not be)."""
        return self._on_loop(self._core.login_desk.issued_tokens)

    def _on_loop(self, call: Callable[[], T]) -> T:
        """Run `call` on the server's loop thread (or here, when the loop is not running)."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.current_thread() is self._thread:
            return call()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # closed in the meantime
            return call()
        return future.result(timeout=CONTROL_TIMEOUT)
