"""`ApiResult`: every outcome of a request, parsed from both response shapes; snippets and
redaction of what the cloud or the network said."""

from __future__ import annotations

import base64
import binascii
import email.utils
import http
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rrpcsync import secrets as secret_values
from rrpcsync.cloud.classify import ErrorClass, classify

MASK = secret_values.REDACTED
SNIPPET_CHARS = 200  # longest body snippet or remote message kept in a result

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


def failure(
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
        return failure(
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
        return failure(
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
    raw = title.group(1) if title else body  # cut only once secrets are redacted
    text = secret_values.redact(raw.decode("utf-8", "replace"))[: limit * 8]
    if text.lstrip().startswith("<"):
        text = _TAG.sub(" ", text)
    return clean_text(text, limit)


def clean_text(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line of printable text (no control or escape characters), at most `limit` chars.

    Every registered secret (`secrets.register`) is redacted first, in every encoding, so a
    secret holding a newline, or one the limit would cut, cannot leave a prefix behind."""
    text = secret_values.redact(text)
    printable = "".join(c if c.isprintable() else " " for c in text[: limit * 4])
    single = " ".join(printable.split())
    return single if len(single) <= limit else single[: limit - 1] + "…"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form (raw, JSON-escaped, base64...: `secrets.forms`) of each secret
    given and of each registered one replaced by "***"."""
    return secret_values.redact(text, secrets)
