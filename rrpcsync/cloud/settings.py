"""Where the client's settings come from: the access token and the endpoint's checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from rrpcsync.errors import ConfigError

DEFAULT_ENDPOINT = "https://iot.cloud.tencent.com/api/exploreropen/tokenapi"
TOKEN_ENV = "RRPCSYNC_ACCESS_TOKEN"


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
