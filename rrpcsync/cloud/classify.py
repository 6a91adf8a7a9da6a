"""How the cloud's answers are classified: fatal, transient, device (DESIGN.md §2)."""

from __future__ import annotations

import enum

# --------------------------------------------------------------------------- classification


class ErrorClass(str, enum.Enum):
    FATAL = "fatal"  # stop the run: every further request would fail the same way
    TRANSIENT = "transient"  # retry with backoff
    DEVICE = "device"  # record `failed` for this device and go on
    # The token was refused and a new one is ready: the request never reached a device, so
    # send it again; neither a device failure nor a retry. Only RrpcClient sets it.
    RESEND = "resend"


# Transport.CertificateError: TLS verification failed, which no retry fixes (and no request
# was sent: the token never left).
_FATAL_CODES = frozenset({"InvalidParameterValue.InvalidAccessToken", "Transport.CertificateError"})
_FATAL_PREFIXES = ("UnauthorizedOperation", "Login.")  # Login.*: no token can be had
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
