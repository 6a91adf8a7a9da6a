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

import asyncio
import base64
import binascii
import email.utils
import enum
import http
import ipaddress
import json
import logging
import math
import re
import ssl
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import yarl

from rrpcsync import __version__
from rrpcsync import secrets as secret_values
from rrpcsync.errors import ConfigError

DEFAULT_ENDPOINT = "https://iot.cloud.tencent.com/api/exploreropen/tokenapi"
ACTION = "AppPublishRRPCMessage"
TOKEN_ENV = "RRPCSYNC_ACCESS_TOKEN"
MASK = "***"
SNIPPET_CHARS = 200  # longest body snippet or remote message kept in a result
MAX_RESPONSE_BYTES = 1 << 20  # replies are MQTT messages (<= 64 KiB); more is not the API

log = logging.getLogger("rrpcsync.client")


# --------------------------------------------------------------------------- classification


class ErrorClass(str, enum.Enum):
    FATAL = "fatal"  # stop the run: every further request would fail the same way
    TRANSIENT = "transient"  # retry with backoff
    DEVICE = "device"  # record `failed` for this device and go on


# Transport.CertificateError: TLS verification failed, which no retry fixes (and no request
# was sent: the token never left).
_FATAL_CODES = frozenset({"InvalidParameterValue.InvalidAccessToken", "Transport.CertificateError"})
_FATAL_PREFIXES = ("UnauthorizedOperation",)
_TRANSIENT_PREFIXES = ("InternalError", "RequestLimitExceeded", "Transport.", "Protocol.")
_DEVICE_CODES = frozenset(
    {
        "FailedOperation.DeviceOffline",
        "FailedOperation.DeviceNoSubscription",
        "FailedOperation.RRPCTimeout",
    }
)
_DEVICE_PREFIXES = ("ResourceNotFound", "InvalidParameterValue")
# Statuses that mean the endpoint or the credentials are wrong, so every request would fail.
_FATAL_STATUSES = frozenset({401, 403, 404, 405, 407, 410})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


def classify(code: str, http_status: int | None = None) -> ErrorClass:
    """The class of an error code (DESIGN.md §2).

    Codes the table names win over the HTTP status. For any other code the status decides:
    the code `HTTP.<status>` or `http_status` of 429/408/425/5xx is transient; 3xx (a redirect:
    wrong endpoint) and 401/403/404/405/407/410 are fatal; anything else, including an unknown
    code with HTTP 200, is a device error (record it and go on).
    """
    if code in _FATAL_CODES or code.startswith(_FATAL_PREFIXES):
        return ErrorClass.FATAL
    if code.startswith(_TRANSIENT_PREFIXES):
        return ErrorClass.TRANSIENT
    if code in _DEVICE_CODES or code.startswith(_DEVICE_PREFIXES):
        return ErrorClass.DEVICE
    status = _status_in_code(code)
    if status is None:
        status = http_status
    return ErrorClass.DEVICE if status is None else _classify_status(status)


def _status_in_code(code: str) -> int | None:
    prefix, _, digits = code.partition(".")
    if prefix == "HTTP" and len(digits) == 3 and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def _classify_status(status: int) -> ErrorClass:
    if status in _TRANSIENT_STATUSES or status >= 500:
        return ErrorClass.TRANSIENT
    if status in _FATAL_STATUSES or 300 <= status < 400:
        return ErrorClass.FATAL
    return ErrorClass.DEVICE


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ApiResult:
    """The outcome of one request. On success `code`/`error_class` are None; `message` is None
    too unless the reply was odd (e.g. `PayloadBase64` that is not base64)."""

    ok: bool
    request_id: str
    message_id: int | None
    reply_base64: str | None
    reply_text: str | None  # the reply decoded as UTF-8, None if absent or not valid UTF-8
    code: str | None
    message: str | None
    error_class: ErrorClass | None
    http_status: int | None
    retry_after: float | None  # seconds the server asked us to wait (Retry-After)
    elapsed: float


def _failure(
    request_id: str,
    code: str,
    message: str,
    *,
    http_status: int | None = None,
    retry_after: float | None = None,
    elapsed: float = 0.0,
) -> ApiResult:
    return ApiResult(
        ok=False,
        request_id=request_id,
        message_id=None,
        reply_base64=None,
        reply_text=None,
        code=code,
        message=message,
        error_class=classify(code, http_status),
        http_status=http_status,
        retry_after=retry_after,
        elapsed=elapsed,
    )


class _Shape(Exception):
    """The body is JSON but not one of the two shapes the API uses (internal to parsing)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request_id: str,
    *,
    elapsed: float = 0.0,
    now: datetime | None = None,
) -> ApiResult:
    """Turn one HTTP response into an `ApiResult`. Never raises.

    Accepted bodies: `{"Response": {...}}` and the wrapped `{"code": 0, "msg": "", "data": {...}}`
    (`data` may itself hold `{"Response": {...}}`). `Response.Error` (or `data.Error`) is a
    failure with its `Code`; a wrapped `code` other than 0 without `data.Error` is the failure
    `RemoteError.<code>` with `msg` as its message.

    Bodies that cannot be read as the API: with a non-2xx status the code is `HTTP.<status>`
    (e.g. `HTTP.502` for a gateway's HTML page, `HTTP.429`); with a 2xx status it is
    `Protocol.NonJSONBody` (not UTF-8 JSON) or `Protocol.UnexpectedShape` (JSON but not an
    object with `Response`/`data`, or a malformed `Error`). A non-2xx status with a success body
    is `HTTP.<status>` too. See `classify` for the classes.

    Success: `MessageId` and `PayloadBase64` may be null. A `PayloadBase64` that is not valid
    base64 is still a success (the cloud acknowledged the message, so the device has it):
    `reply_base64` keeps the string as received, `reply_text` is None and `message` says why.

    `retry_after` comes from a `Retry-After` header (seconds or an HTTP-date, measured from
    `now`, default the current time) on any response. Messages are at most ~200 characters of
    printable text; they contain what the server sent, so `RrpcClient` also redacts the token.
    """
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
    try:
        fields = _api_fields(_decode_json(body))
        return _from_fields(fields, status, request_id, retry_after, elapsed)
    except _Shape as problem:
        if 200 <= status < 300:
            code, message = problem.code, problem.message
        else:
            code, message = f"HTTP.{status}", _status_message(status, body)
        return _failure(
            request_id,
            code,
            message,
            http_status=status,
            retry_after=retry_after,
            elapsed=elapsed,
        )


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Shape("Protocol.NonJSONBody", "response is not JSON: " + snippet(body)) from None


def _api_fields(document: Any) -> dict[str, Any]:
    """The object holding MessageId/PayloadBase64/Error, from either accepted shape."""
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise _Shape("Protocol.UnexpectedShape", f"response JSON is a {kind}, not an object")
    if "Response" in document:
        return _object(document["Response"], "Response")
    if "data" in document or "code" in document:
        return _unwrap(document)
    keys = ", ".join(sorted(document)[:5]) or "none"
    raise _Shape("Protocol.UnexpectedShape", f"response has no Response object (keys: {keys})")


def _unwrap(document: dict[str, Any]) -> dict[str, Any]:
    code, data = document.get("code", 0), document.get("data")
    if isinstance(data, dict) and "Response" in data:
        data = data["Response"]
    if isinstance(data, dict) and "Error" in data:
        return data
    if code not in (0, "0"):
        text = clean_text(str(document.get("msg") or ""))
        code_text = clean_text(str(code), 40).replace(" ", "_")
        return {"Error": {"Code": f"RemoteError.{code_text}", "Message": text}}
    return _object(data, "data")


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise _Shape("Protocol.UnexpectedShape", f"response {name} is a {kind}, not an object")
    return value


def _from_fields(
    fields: dict[str, Any],
    status: int,
    request_id: str,
    retry_after: float | None,
    elapsed: float,
) -> ApiResult:
    if "Error" in fields:
        code, message = _error_of(fields["Error"])
        return _failure(
            request_id,
            code,
            message,
            http_status=status,
            retry_after=retry_after,
            elapsed=elapsed,
        )
    if not 200 <= status < 300:
        raise _Shape("", "")  # a success body with an error status: report the status
    reply, text, note = _reply_of(fields.get("PayloadBase64"))
    return ApiResult(
        ok=True,
        request_id=request_id,
        message_id=_message_id_of(fields.get("MessageId")),
        reply_base64=reply,
        reply_text=text,
        code=None,
        message=note,
        error_class=None,
        http_status=status,
        retry_after=retry_after,
        elapsed=elapsed,
    )


def _error_of(error: Any) -> tuple[str, str]:
    code = error.get("Code") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code.strip():
        raise _Shape("Protocol.UnexpectedShape", "response Error has no Code")
    message = error.get("Message")
    return clean_text(code, 100), clean_text(message if isinstance(message, str) else "")


def _message_id_of(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _reply_of(value: Any) -> tuple[str | None, str | None, str | None]:
    """(reply_base64, reply_text, note) of a PayloadBase64 value."""
    if value is None:
        return None, None, None
    if not isinstance(value, str):
        return None, None, f"PayloadBase64 is a {type(value).__name__}, not a string; ignored"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value, None, "PayloadBase64 is not valid base64; kept as received"
    try:
        return value, raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return value, None, None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if absent
    or unreadable. Never negative."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return _seconds_until(value, now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds_until(date_text: str, now: datetime | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(date_text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _status_message(status: int, body: bytes) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = f"HTTP {status} {phrase}".rstrip()
    text = snippet(body)
    return f"{head}: {text}" if text else head


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def snippet(body: bytes, limit: int = SNIPPET_CHARS) -> str:
    """A short printable excerpt of a body: an HTML page's <title>, else its text."""
    title = _TITLE.search(body[:8192])
    raw = title.group(1) if title else body[: limit * 8]
    text = raw.decode("utf-8", "replace")
    if text.lstrip().startswith("<"):
        text = _TAG.sub(" ", text)
    return clean_text(text, limit)


def clean_text(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line of printable text (no control or escape characters), at most `limit` chars."""
    printable = "".join(c if c.isprintable() else " " for c in text[: limit * 4])
    single = " ".join(printable.split())
    return single if len(single) <= limit else single[: limit - 1] + "…"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each non-empty secret replaced by "***"."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


# --------------------------------------------------------------------------- settings


def resolve_token(env: Mapping[str, str], token_file: str | None) -> str:
    """The access token: from `token_file` if given (whitespace stripped), else from the
    environment. Error messages name the file, never its content."""
    if token_file is not None:
        return _read_token_file(token_file)
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no access token: set {TOKEN_ENV} or pass --access-token-file")
    return token


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"access token file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"access token file {path} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read access token file {path}: {reason}") from None
    if not token:
        raise ConfigError(f"access token file {path} is empty")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, allow_insecure: bool) -> list[str]:
    """Refuse an endpoint that would send the token in clear text; returns warnings.

    https:// is required, except that http:// is fine for loopback hosts; with
    `allow_insecure` any other http:// endpoint gives a warning instead of a `ConfigError`.
    """
    scheme, host = _scheme_and_host(url)
    if scheme == "https" or is_loopback(host):
        return []
    if allow_insecure:
        return [f"endpoint {url} is not https: the access token travels in clear text"]
    raise ConfigError(
        f"endpoint {url} must use https:// (http:// is allowed for loopback hosts only; "
        "--allow-insecure-endpoint overrides)"
    )


def _scheme_and_host(url: str) -> tuple[str, str]:
    malformed = ConfigError(f"malformed endpoint URL {url!r}: expected https://HOST/PATH")
    if not url or any(c.isspace() for c in url):
        raise malformed
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise malformed from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise malformed
    return parts.scheme.lower(), parts.hostname


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

    def _proxy(self, url: httpx.URL) -> str | None:
        if not self._trust_env:
            return None
        key = (url.scheme, url.host)
        if key not in self._proxies:
            self._proxies[key] = env_proxy(url.scheme, url.host)
        return self._proxies[key]

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
                proxy=self._proxy(request.url),
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

    `transport` replaces the default `AiohttpTransport` (tests, other pools); it is closed
    with the client.
    """

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        timeout: float = 15.0,
        max_connections: int = 10,
        user_agent: str = f"rrpcsync/{__version__}",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._token = token
        sensitive = secret_values.known_values()  # `${env:…}` values in payloads
        self._secrets = (token, json.dumps(token)[1:-1], *sensitive)
        if transport is None:
            transport = AiohttpTransport(max_connections=max_connections, total_timeout=timeout)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": user_agent, "Content-Type": "application/json"},
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
        fields = {
            "Action": ACTION,
            "RequestId": request_id,
            "AccessToken": self._token,
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

    async def _post(self, fields: Mapping[str, str]) -> tuple[int, httpx.Headers, bytes]:
        content = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        async with self._http.stream("POST", self.endpoint, content=content) as response:
            body = await _read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
            return response.status_code, response.headers, body

    def _transport_failure(self, exc: Exception, request_id: str, elapsed: float) -> ApiResult:
        code = transport_error_code(exc)
        if code is None:
            raise exc
        detail = clean_text(redact(str(exc), self._secrets)) or type(exc).__name__
        return _failure(request_id, code, detail, elapsed=elapsed)

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
