"""Async client for the app API `AppPublishRRPCMessage`, and how its errors are classified.

`RrpcClient.publish` never raises for anything the network or the cloud does: every outcome is an
`ApiResult` whose `error_class` tells the executor what to do (DESIGN.md §2). Only programming
errors and `asyncio.CancelledError` propagate.

The HTTP code is written against httpx's API, but by default aiohttp does the I/O
(`AiohttpTransport` below): httpx's own async pool collapses with 50+ requests in flight
(encode/httpx#3215). The transport lives here rather than coming from httpx-aiohttp because
httpx-aiohttp 0.2 maps a connection reset, a server disconnect and a refused connection all to
`httpx.ConnectTimeout`, and lets malformed-response errors escape as raw aiohttp exceptions.

The access token never appears in a log line, an exception message or a result: requests are
logged with `AccessToken` replaced by "***", and every message passes through `redact`.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

import aiohttp
import httpx
import yarl

from rrpcsync import __version__
from rrpcsync import secrets as secret_values
from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import (
    MASK,
    ApiResult,
    clean_text,
    failure,
    parse_response,
    redact,
)
from rrpcsync.cloud.tokens import StaticToken, TokenError, TokenSource
from rrpcsync.cloud.transport import AiohttpTransport, to_httpx_error

ACTION = "AppPublishRRPCMessage"
INVALID_TOKEN = "InvalidParameterValue.InvalidAccessToken"
MAX_RESPONSE_BYTES = 1 << 20  # replies are MQTT messages (<= 64 KiB); more is not the API

log = logging.getLogger("rrpcsync.client")


# --------------------------------------------------------------------------- client

# First match wins (httpx.ConnectTimeout is a TimeoutException, not a ConnectError).
_TRANSPORT_CODES: tuple[tuple[type[Exception], str], ...] = (
    (httpx.TimeoutException, "Transport.Timeout"),
    (httpx.ConnectError, "Transport.ConnectError"),
    (httpx.ProtocolError, "Transport.ProtocolError"),
    (httpx.ReadError, "Transport.ReadError"),
    (httpx.WriteError, "Transport.WriteError"),
    (httpx.RequestError, "Transport.Error"),
)


def transport_error_code(exc: BaseException) -> str | None:
    """The `Transport.*` code of a network failure (httpx, aiohttp or OS level); None for
    anything else, which is a bug and must propagate."""
    mapped = to_httpx_error(exc)
    if mapped is None:
        return None
    if _is_certificate_error(exc):
        return "Transport.CertificateError"
    return next(code for kind, code in _TRANSPORT_CODES if isinstance(mapped, kind))


_CERTIFICATE_ERRORS = (
    ssl.SSLCertVerificationError,
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ServerFingerprintMismatch,
)


def _is_certificate_error(exc: BaseException) -> bool:
    """Whether TLS verification failed somewhere in the exception's chain of causes."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        if isinstance(current, _CERTIFICATE_ERRORS):
            return True
        current = current.__cause__ or current.__context__
    return False


class RrpcClient:
    """Publishes RRPC messages over one pooled HTTP client (use `async with`).

    `token` is a fixed access token or a `TokenSource` (`cloud.login.AppLogin` logs in and
    renews): each request asks it for the token to send, tells it when a token was refused,
    and, when it has a new one, answers `ErrorClass.RESEND` (the request never reached a
    device). `transport` replaces the default `AiohttpTransport` (tests, other pools); it is closed
    with the client.
    """

    def __init__(
        self,
        endpoint: str,
        token: str | TokenSource,
        *,
        timeout: float = 15.0,
        max_connections: int = 10,
        user_agent: str = f"rrpcsync/{__version__}",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._tokens: TokenSource = StaticToken(token) if isinstance(token, str) else token
        self._sensitive = tuple(secret_values.known_values())  # `${env:…}` values in payloads
        self._timeout = timeout
        self._headers = {"User-Agent": user_agent, "Content-Type": "application/json"}
        # the default transport is used directly (AiohttpTransport.post); another goes through
        # httpx's client
        self._direct: AiohttpTransport | None = None
        self._url = yarl.URL(endpoint)
        if transport is None:
            transport = self._direct = AiohttpTransport(
                max_connections=max_connections, total_timeout=timeout
            )
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            headers=self._headers,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"RrpcClient({self.endpoint!r})"

    async def __aenter__(self) -> RrpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(
        self, product_id: str, device_name: str, payload: str, request_id: str | None = None
    ) -> ApiResult:
        """Send one RRPC message and wait for the device's reply. Never raises for network
        or API failures: they are results (see `parse_response`, `transport_error_code`)."""
        request_id = request_id or str(uuid.uuid4())
        try:
            token = await self._tokens.token()
        except TokenError as error:
            return self._no_token(error, request_id, product_id, device_name)
        result = await self._send(token, product_id, device_name, payload, request_id)
        if result.code != INVALID_TOKEN:
            if _answered_by_the_api(result):
                self._tokens.accepted(token)
            return result
        try:
            renewed = await self._tokens.refused(token)
        except TokenError as error:
            return self._no_token(error, request_id, product_id, device_name)
        return replace(result, error_class=ErrorClass.RESEND) if renewed else result

    @property
    def _secrets(self) -> tuple[str, ...]:
        tokens = self._tokens.secrets()
        return (*tokens, *(json.dumps(value)[1:-1] for value in tokens), *self._sensitive)

    def _no_token(
        self, error: TokenError, request_id: str, product_id: str, device_name: str
    ) -> ApiResult:
        message = clean_text(redact(str(error), self._secrets))
        result = failure(request_id, error.result_code(), message)
        self._log_result(product_id, device_name, result)
        return result

    async def _send(
        self, token: str, product_id: str, device_name: str, payload: str, request_id: str
    ) -> ApiResult:
        # registered before any answer is read: clean_text redacts it before cutting a message
        secret_values.register(token, *self._tokens.secrets())
        fields = {
            "Action": ACTION,
            "RequestId": request_id,
            "AccessToken": token,
            "ProductId": product_id,
            "DeviceName": device_name,
            "Payload": payload,
        }
        if log.isEnabledFor(logging.DEBUG):
            shown = json.dumps({**fields, "AccessToken": MASK}, ensure_ascii=False)
            log.debug("request %s", redact(shown, self._secrets))
        started = time.monotonic()
        try:
            status, headers, body = await self._post(fields)
        except Exception as exc:
            result = self._transport_failure(exc, request_id, time.monotonic() - started)
        else:
            elapsed = time.monotonic() - started
            result = self._redacted(
                parse_response(status, headers, body, request_id, elapsed=elapsed)
            )
        self._log_result(product_id, device_name, result)
        return result

    async def _post(self, fields: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        content = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if self._direct is not None:
            return await self._direct.post(
                self._url, content, self._headers, self._timeout, MAX_RESPONSE_BYTES
            )
        async with self._http.stream("POST", self.endpoint, content=content) as response:
            body = await _read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
            return response.status_code, response.headers, body

    def _transport_failure(self, exc: Exception, request_id: str, elapsed: float) -> ApiResult:
        code = transport_error_code(exc)
        if code is None:
            raise exc
        detail = clean_text(redact(str(exc), self._secrets)) or type(exc).__name__
        return failure(request_id, code, detail, elapsed=elapsed)

    def _redacted(self, result: ApiResult) -> ApiResult:
        if result.message is None:
            return result
        return replace(result, message=redact(result.message, self._secrets))

    def _log_result(self, product_id: str, device_name: str, result: ApiResult) -> None:
        log.debug(
            "response %s %s/%s: status=%s code=%s class=%s elapsed=%.3fs %s",
            result.request_id,
            product_id,
            device_name,
            result.http_status,
            result.code or "OK",
            result.error_class.value if result.error_class else "-",
            result.elapsed,
            result.message or "",
        )


def _answered_by_the_api(result: ApiResult) -> bool:
    """The cloud read the request (so it took the token), rather than a network failure."""
    return result.ok or not (result.code or "").startswith(("Transport.", "Protocol.", "HTTP."))


async def _read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, cut at `limit` bytes (a cut body fails to parse as JSON: a protocol error)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]
