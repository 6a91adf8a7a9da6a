"""Where the client's settings come from: the access token and the endpoint's checks."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from rrpcsync import secrets
from rrpcsync.errors import ConfigError

log = logging.getLogger("rrpcsync.settings")

DEFAULT_ENDPOINT = "https://iot.cloud.tencent.com/api/exploreropen/tokenapi"
TOKEN_ENV = "RRPCSYNC_ACCESS_TOKEN"


# --------------------------------------------------------------------------- settings


def resolve_token(env: Mapping[str, str], token_file: str | None) -> str:
    """The access token: from `token_file` if given (whitespace stripped), else from the
    environment. Error messages name the file, never its content."""
    if token_file is not None:
        return check_secret_text(_read_token_file(token_file), f"access token file {token_file}")
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no access token: set {TOKEN_ENV} or pass --access-token-file")
    return check_secret_text(token, f"the access token in {TOKEN_ENV}")


def check_secret_text(value: str, source: str) -> str:
    """A secret that can be sent as JSON text: UTF-8, no control characters. Checked before
    anything is sent or journaled; the message names where it came from, never the value.
    The value is registered for redaction (`secrets.register`) even when refused."""
    secrets.register(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        raise ConfigError(f"{source} is not valid UTF-8 text") from None
    bad = next((index for index, char in enumerate(value) if not char.isprintable()), None)
    if bad is not None:
        raise ConfigError(
            f"{source} contains a control or non-printable character (at position {bad + 1})"
        )
    return value


def warn_if_shared(path: str | Path, what: str) -> None:
    """Like ssh: a secret file that group or others may read gets a warning."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "%s %s is accessible by group or others (mode %04o): run `chmod 600 %s`",
            what,
            path,
            mode,
            path,
        )


def _read_token_file(path: str) -> str:
    warn_if_shared(path, "access token file")
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
    parts = _parts(url)
    scheme, host, shown = parts.scheme.lower(), str(parts.hostname), shown_url(url)
    if scheme == "https" or is_loopback(host):
        return []
    if allow_insecure:
        return [f"endpoint {shown} is not https: the access token travels in clear text"]
    raise ConfigError(
        f"endpoint {shown} must use https:// (http:// is allowed for loopback hosts only; "
        "--allow-insecure-endpoint overrides)"
    )


def shown_url(url: str) -> str:
    """A URL as it may be printed: no user, password, query string or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(an unreadable URL)"
    host = f"[{host}]" if ":" in host else host
    text = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "(an unreadable URL)"
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)


def _parts(url: str) -> SplitResult:
    malformed = ConfigError(f"malformed endpoint URL {shown_url(url)}: expected https://HOST/PATH")
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise malformed
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise malformed from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise malformed
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        if parts.password:
            secrets.register(parts.password)
        raise ConfigError(
            f"endpoint {shown_url(url)} holds a user name or password (user:pass@host): "
            "rrpcsync authenticates with the access token only; remove them from the URL"
        )
    return parts
