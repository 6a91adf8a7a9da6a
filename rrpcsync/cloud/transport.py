"""The aiohttp transport under httpx's API (httpx's own async pool collapses with 50+
requests in flight, encode/httpx#3215; httpx-aiohttp mis-maps resets as ConnectTimeout)."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
import yarl

from rrpcsync.cloud.settings import is_loopback

# --------------------------------------------------------------------------- transport

# First match wins: aiohttp's exception classes overlap (ServerTimeoutError is also a
# ClientConnectionError and a TimeoutError, ClientConnectorError is also a ClientOSError).
_AIOHTTP_TO_HTTPX: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # malformed status line/headers
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (asyncio.TimeoutError, httpx.TimeoutException),  # the total deadline
    (aiohttp.ClientOSError, httpx.ReadError),  # connection reset after the request went out
    (aiohttp.ClientError, httpx.TransportError),
    (OSError, httpx.NetworkError),
)


def to_httpx_error(exc: BaseException, request: httpx.Request | None = None) -> Exception | None:
    """The httpx exception a native transport would raise for an aiohttp/OS error; None if
    `exc` is not a network error (then it is a bug and must propagate)."""
    if isinstance(exc, httpx.RequestError):
        return exc
    for source, target in _AIOHTTP_TO_HTTPX:
        if isinstance(exc, source):
            detail = str(exc) or ("timed out" if isinstance(exc, asyncio.TimeoutError) else "")
            return target(detail or type(exc).__name__, request=request)
    return None


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


def _mapped(exc: Exception, request: httpx.Request) -> Exception:
    mapped = to_httpx_error(exc, request)
    return mapped if mapped is not None else exc  # pragma: no cover - all caught types map


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that does its I/O with one aiohttp session: a pooled connector of
    at most `max_connections` keep-alive connections, TLS verified. aiohttp failures surface as
    the httpx exceptions httpx's own transport raises (see `_AIOHTTP_TO_HTTPX`).

    httpx's per-request connect/read/pool timeouts apply; `total_timeout`, if set, bounds the
    whole exchange (aiohttp's read timeout is per read, so a trickling server could otherwise
    hold a request forever). `trust_env` honours HTTP(S)_PROXY/ALL_PROXY/NO_PROXY like httpx
    does, except that loopback hosts never go through a proxy; the proxy is looked up once per
    host (aiohttp's own `trust_env` looks it up in a worker thread on every request).
    """

    def __init__(
        self,
        *,
        max_connections: int = 10,
        keepalive_expiry: float = 15.0,
        total_timeout: float | None = None,
        verify: ssl.SSLContext | bool = True,
        trust_env: bool = True,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._total_timeout = total_timeout
        self._ssl: ssl.SSLContext | bool = httpx.create_ssl_context() if verify is True else verify
        self._trust_env = trust_env
        self._proxies: dict[tuple[str, str], str | None] = {}
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_expiry,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return self._session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        phases: dict[str, float | None] = request.extensions.get("timeout", {})
        return aiohttp.ClientTimeout(
            total=self._total_timeout,
            connect=phases.get("pool"),  # aiohttp: waiting for a pooled connection + connecting
            sock_connect=phases.get("connect"),
            sock_read=phases.get("read"),
        )

    def _proxy(self, scheme: str, host: str) -> str | None:
        if not self._trust_env:
            return None
        key = (scheme, host)
        if key not in self._proxies:
            self._proxies[key] = env_proxy(scheme, host)
        return self._proxies[key]

    async def post(
        self, url: yarl.URL, body: bytes, headers: Mapping[str, str], timeout: float, limit: int
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One POST straight through aiohttp: (status, headers, body cut at `limit` bytes).

        The client's hot path: the same session, pool, TLS, proxy and timeouts as
        `handle_async_request`, without building httpx request and response objects (a third
        of the client's CPU per request at 200 in flight, docs/performance.md). Failures are
        aiohttp/OS exceptions; `to_httpx_error` maps them. The body is asked for uncompressed.
        """
        phases = aiohttp.ClientTimeout(
            total=self._total_timeout, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        async with self._session_now().post(
            url,
            data=body,
            headers={**headers, "Accept-Encoding": "identity"},
            allow_redirects=False,
            timeout=phases,
            proxy=self._proxy(url.scheme, url.host or ""),
        ) as response:
            parts: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                parts.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
            return response.status, response.headers, b"".join(parts)[:limit]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() != "transfer-encoding"
        ]
        body = await request.aread()
        try:
            response = await self._session_now().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request),
                proxy=self._proxy(request.url.scheme, request.url.host),
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _mapped(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy URL the environment sets for `scheme://host`; None for loopback hosts."""
    if is_loopback(host) or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(scheme) or proxies.get("all")


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", "replace")
