"""Logging in to the app API (`AppGetToken`) and keeping the access token fresh during a run.

Pieces, each usable on its own (docs/auth.md explains them to users):

- `sign` / `string_to_sign`: the app API's request signature (../shared/seeds/AppGetToken.md):
  every parameter but `Signature`, empty ones left out, `_` in a key becomes `.`, sorted by
  name, `Name=value` joined with `&`, then base64(HMAC-SHA1(AppSecret, that string)).
- `resolve_auth`: where the credentials come from (command-line files, then the environment)
  and the precedence between the app's keys and a static access token.
- `resolve_endpoints`: the RRPC and login endpoints of a site, with their overrides.
- `AppLogin`: a `TokenSource` that logs in with `AppGetToken`, renews shortly before
  `ExpireAt`, renews once when the cloud refuses the token, and runs one login at a time
  (requests that need a token wait for it). `StaticToken` is the same interface for a token
  given by the user, which cannot be renewed.

The password, the AppSecret and every token stay in memory: no repr, log line or error message
contains them (`Credentials.__repr__`, `AppLogin.secrets` for redaction elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from rrpcsync import __version__
from rrpcsync.cloud.client import transport_error_code
from rrpcsync.cloud.results import clean_text, redact, snippet
from rrpcsync.cloud.settings import check_endpoint, check_secret_text, shown_url
from rrpcsync.cloud.tokens import StaticToken, TokenError, TokenSource
from rrpcsync.cloud.transport import AiohttpTransport
from rrpcsync.errors import ConfigError

log = logging.getLogger("rrpcsync.login")

LOGIN_ACTION = "AppGetToken"
RRPC_PATH = "/api/exploreropen/tokenapi"
LOGIN_PATH = "/api/exploreropen/appapi"
SITES = {"china": "iot.cloud.tencent.com", "overseas": "oversea.iotcloud.tencentiotcloud.com"}
DEFAULT_SITE = "china"
SITE_ENV = "RRPCSYNC_SITE"
ENDPOINT_ENV = "RRPCSYNC_ENDPOINT"
LOGIN_ENDPOINT_ENV = "RRPCSYNC_LOGIN_ENDPOINT"
TOKEN_ENV = "RRPCSYNC_ACCESS_TOKEN"
APP_KEY_ENV = "RRPCSYNC_APP_KEY"
APP_SECRET_ENV = "RRPCSYNC_APP_SECRET"
USER_ENV = "RRPCSYNC_USER"
PASSWORD_ENV = "RRPCSYNC_PASSWORD"
CREDENTIAL_KEYS = (APP_KEY_ENV, APP_SECRET_ENV, USER_ENV, PASSWORD_ENV)
MASK = "***"

RENEW_BEFORE = 300.0  # seconds before ExpireAt a token is renewed, at most ...
RENEW_SHARE = 0.2  # ... and at most this share of its lifetime (a 2 s token: 0.4 s before)
LOGIN_ATTEMPTS = 4  # a login tried at most this often when the answer is transient
LOGIN_BACKOFF = 0.5  # seconds before the second attempt, doubling
LOGIN_TIMEOUT = 15.0
MAX_BODY = 1 << 16  # a login answer is a few hundred bytes


# --------------------------------------------------------------------------- the signature


def string_to_sign(params: Mapping[str, object]) -> str:
    """`Name=value` pairs of every parameter but `Signature`, sorted, joined with `&`.

    Empty strings (and None) are left out; `_` in a name becomes `.`; values are written
    raw (not URL-encoded), numbers in decimal.
    """
    pairs = sorted(
        (name.replace("_", "."), _raw(value))
        for name, value in params.items()
        if name != "Signature" and value is not None and value != ""
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def _raw(value: object) -> str:
    if isinstance(value, bool):  # never sent by rrpcsync; written like JSON if it were
        return "true" if value else "false"
    return str(value)


def sign(params: Mapping[str, object], app_secret: str) -> str:
    """base64(HMAC-SHA1(key=AppSecret, message=string_to_sign(params)))."""
    message = string_to_sign(params).encode("utf-8")
    digest = hmac.new(app_secret.encode("utf-8"), message, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


# --------------------------------------------------------------------------- credentials


_PHONE = re.compile(r"^\+([0-9]{1,4})[ -]([0-9]{4,15})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class User:
    """Who logs in: an email, or a phone number as country code + number."""

    email: str | None = None
    country_code: str | None = None
    phone_number: str | None = None

    @classmethod
    def parse(cls, text: str, where: str = USER_ENV) -> User:
        """`ops@example.com`, `+86 13900000000` or `+86-13900000000`."""
        text = text.strip()
        phone = _PHONE.match(text)
        if phone:
            return cls(country_code=phone[1], phone_number=phone[2])
        if _EMAIL.match(text):
            return cls(email=text)
        raise ConfigError(
            f"{where} must be an email address or a phone number written "
            "'+COUNTRYCODE NUMBER' (e.g. +86 13900000000)"
        )

    def fields(self) -> dict[str, str]:
        """The AppGetToken parameters naming the user."""
        if self.email is not None:
            return {"Type": "email", "Email": self.email}
        return {
            "Type": "phone",
            "CountryCode": self.country_code or "",
            "PhoneNumber": self.phone_number or "",
        }

    def __str__(self) -> str:
        return self.email or f"+{self.country_code} {self.phone_number}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An app's keys and a user's password. The repr shows neither secret."""

    app_key: str
    app_secret: str = dataclasses.field(repr=False)
    user: User
    password: str = dataclasses.field(repr=False)

    def secrets(self) -> tuple[str, ...]:
        return (self.app_secret, self.password)


@dataclass(frozen=True, slots=True)
class StaticAuth:
    """A token the user obtained; `source` says where it came from (never the value)."""

    token: str = dataclasses.field(repr=False)
    source: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoginAuth:
    """Log in with `credentials`; `source` says where they came from (never the values)."""

    credentials: Credentials
    source: str
    notes: tuple[str, ...] = ()  # warnings and remarks for the user (no values)


Auth = StaticAuth | LoginAuth


def resolve_auth(
    env: Mapping[str, str],
    credentials_file: str | None = None,
    token_file: str | None = None,
) -> Auth:
    """`find_auth`, its secrets registered for redaction and checked to be printable UTF-8
    text, before anything is sent or journaled (a message names the source, never a value)."""
    auth = find_auth(env, credentials_file, token_file)
    if isinstance(auth, StaticAuth):
        check_secret_text(auth.token, f"the access token from {auth.source}")
        return auth
    given = auth.credentials
    for name, value in (
        (APP_KEY_ENV, given.app_key),
        (APP_SECRET_ENV, given.app_secret),
        (PASSWORD_ENV, given.password),
    ):
        check_secret_text(value, f"{name} from {auth.source}")
    return auth


def find_auth(
    env: Mapping[str, str],
    credentials_file: str | None = None,
    token_file: str | None = None,
) -> Auth:
    """The credentials to use, in this order (docs/auth.md):

    1. `--access-token-file FILE`: a static token;
    2. `--credentials-file FILE`: the four keys, from the file;
    3. `RRPCSYNC_APP_KEY`, `RRPCSYNC_APP_SECRET`, `RRPCSYNC_USER`, `RRPCSYNC_PASSWORD`: all four
       from the environment (some but not all of them is an error);
    4. `RRPCSYNC_ACCESS_TOKEN`: a static token.
    """
    if token_file is not None and credentials_file is not None:
        raise ConfigError("pass either --access-token-file or --credentials-file, not both")
    if token_file is not None:
        notes = _permission_warnings(token_file, "access token file")
        return StaticAuth(_read_token_file(token_file), f"--access-token-file {token_file}", notes)
    if credentials_file is not None:
        values, notes = read_credentials_file(credentials_file)
        credentials = _credentials(values, f"{credentials_file}: ")
        return LoginAuth(credentials, f"--credentials-file {credentials_file}", notes)
    if any(env.get(key, "").strip() for key in CREDENTIAL_KEYS):
        credentials = _credentials(env, "")
        notes = (f"{TOKEN_ENV} is set too and ignored",) if env.get(TOKEN_ENV, "").strip() else ()
        return LoginAuth(credentials, "environment (" + ", ".join(CREDENTIAL_KEYS) + ")", notes)
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return StaticAuth(token, f"environment ({TOKEN_ENV})")
    raise ConfigError(
        f"no credentials: set {', '.join(CREDENTIAL_KEYS)} (or pass --credentials-file), "
        f"or a static {TOKEN_ENV} (or --access-token-file); see docs/auth.md"
    )


def _credentials(values: Mapping[str, str], where: str) -> Credentials:
    missing = [key for key in CREDENTIAL_KEYS if not values.get(key, "").strip()]
    if missing:
        given = [key for key in CREDENTIAL_KEYS if key not in missing]
        raise ConfigError(
            f"{where}{', '.join(missing)} missing (given: {', '.join(given)}); logging in "
            "needs all four of " + ", ".join(CREDENTIAL_KEYS)
        )
    return Credentials(
        app_key=values[APP_KEY_ENV].strip(),
        app_secret=values[APP_SECRET_ENV].strip(),
        user=User.parse(values[USER_ENV], f"{where}{USER_ENV}"),
        password=values[PASSWORD_ENV].strip(),
    )


def read_credentials_file(path: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """`KEY=value` lines (blank lines and `#` comments skipped, `export ` allowed, one pair
    of matching quotes around a value removed). Returns the values and warnings: a file that
    group or others may read gets one, like ssh does for a private key."""
    text = _read_text(path, "credentials file")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = _credentials_line(line, f"{path}:{number}")
        if entry is None:
            continue
        key, value = entry
        if key in values:
            raise ConfigError(f"{path}:{number}: {key} is set twice")
        values[key] = value
    return values, _permission_warnings(path)


def _credentials_line(line: str, where: str) -> tuple[str, str] | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if stripped.startswith("export "):
        stripped = stripped[len("export ") :].lstrip()
    key, equals, value = stripped.partition("=")
    key = key.strip()
    if not equals:
        raise ConfigError(f"{where}: expected KEY=value")  # the line may hold a secret: not shown
    if key not in CREDENTIAL_KEYS:
        shown = clean_text(key, 40)
        raise ConfigError(f"{where}: unknown key {shown!r} (expected {', '.join(CREDENTIAL_KEYS)})")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key, value


def _permission_warnings(path: str, what: str = "credentials file") -> tuple[str, ...]:
    if os.name != "posix":
        return ()
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return ()
    if mode & 0o077:
        return (
            f"warning: {what} {path} is accessible by group or others "
            f"(mode {mode:04o}); run chmod 600 {path}",
        )
    return ()


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}"
        ) from None


def _read_token_file(path: str) -> str:
    token = _read_text(path, "access token file").strip()
    if not token:
        raise ConfigError(f"access token file {path} is empty")
    return token


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoints:
    rrpc: str  # AppPublishRRPCMessage (tokenapi)
    login: str  # AppGetToken (appapi)
    site: str


def site_endpoints(site: str) -> Endpoints:
    host = SITES.get(site)
    if host is None:
        raise ConfigError(f"unknown site {site!r} (expected {' or '.join(SITES)})")
    return Endpoints(f"https://{host}{RRPC_PATH}", f"https://{host}{LOGIN_PATH}", site)


def resolve_endpoints(
    site: str | None = None,
    endpoint: str | None = None,
    login_endpoint: str | None = None,
    *,
    allow_insecure: bool = False,
) -> tuple[Endpoints, list[str]]:
    """Both endpoints and the warnings of `check_endpoint` (https only, loopback excepted).

    The site (default china) gives both. `endpoint` replaces the RRPC one; `login_endpoint`
    the login one. With `endpoint` but no `login_endpoint`, the login endpoint is the
    endpoint's sibling (`login_sibling`), so that credentials go to the host the user chose.
    """
    base = site_endpoints(site or DEFAULT_SITE)
    rrpc = endpoint or base.rrpc
    login = login_endpoint or (login_sibling(endpoint) if endpoint else base.login)
    warnings = check_endpoint(rrpc, allow_insecure)
    if check_endpoint(login, allow_insecure):
        warnings.append(
            f"login endpoint {shown_url(login)} is not https: the password and the token travel "
            "in clear text"
        )
    return Endpoints(rrpc, login, base.site), warnings


def login_sibling(endpoint: str) -> str:
    """`…/tokenapi` → `…/appapi`; any other URL gets `appapi` appended to its path
    (`http://127.0.0.1:8080/` → `http://127.0.0.1:8080/appapi`)."""
    head = endpoint.split("?", 1)[0]
    trimmed = head.rstrip("/")
    if trimmed.endswith("/tokenapi"):
        return trimmed[: -len("tokenapi")] + "appapi"
    return (head if head.endswith("/") else head + "/") + "appapi"


# --------------------------------------------------------------------------- the exchange


@dataclass(frozen=True, slots=True)
class Session:
    """A token and when it expires (`expire_at`, Unix seconds). Held in memory only."""

    token: str = dataclasses.field(repr=False)
    expire_at: float
    obtained_at: float  # local wall time when the login was sent
    user: str
    reactive: bool = False  # obtained because the previous token was refused

    def renew_at(self) -> float:
        """When to log in again: shortly before `expire_at`. A token that looks expired when
        it arrives (the local clock is ahead of the cloud's) is renewed only when the cloud
        refuses it: renewing it by the clock would log in before every request."""
        lifetime = self.expire_at - self.obtained_at
        if lifetime <= 0:
            return math.inf
        return self.expire_at - min(RENEW_BEFORE, lifetime * RENEW_SHARE)

    def expires_utc(self) -> datetime:
        return datetime.fromtimestamp(self.expire_at, timezone.utc)


class Check(str, enum.Enum):
    """What a login failure tells the user to check."""

    USER = f"{USER_ENV} and {PASSWORD_ENV}"
    APP_SECRET = APP_SECRET_ENV
    APP_KEY = APP_KEY_ENV
    CLOCK = "the system clock (the login's Timestamp is more than 300 s off)"
    ENDPOINT = f"the login endpoint (--site, {LOGIN_ENDPOINT_ENV})"
    CREDENTIALS = ", ".join(CREDENTIAL_KEYS)
    NETWORK = f"the network and the login endpoint ({LOGIN_ENDPOINT_ENV})"


class LoginError(TokenError):
    """Logging in failed, or the cloud refused a new token at once; the message names the
    credential to check and never contains a secret."""

    def __init__(self, code: str, message: str, check: Check) -> None:
        self.detail = message
        self.check = check
        text = (
            f"login failed ({code}: {message}); check {check.value}"
            if message
            else (f"login failed ({code}); check {check.value}")
        )
        super().__init__(code, text)


# Each (pattern in code or message, what to check); first match wins. The cloud reports a
# wrong password as InternalError with the message "InvalidParameterValue.UserLoginFailed|…".
_CREDENTIAL_HINTS: tuple[tuple[str, Check], ...] = (
    ("UserLoginFailed", Check.USER),
    ("Password", Check.USER),
    ("UserNotExist", Check.USER),
    ("Signature", Check.APP_SECRET),
    ("AppKey", Check.APP_KEY),
    ("AppSecret", Check.APP_SECRET),
    ("Timestamp", Check.CLOCK),
    ("InvalidAction", Check.ENDPOINT),
    ("ActionNotFound", Check.ENDPOINT),
)
_TRANSIENT = ("InternalError", "RequestLimitExceeded", "Transport.", "Protocol.", "Nonce")


def login_failure(code: str, message: str, status: int | None) -> tuple[bool, Check]:
    """(transient, what to check) for a failed login: credential problems are never
    retried; server and network trouble is (`LOGIN_ATTEMPTS`)."""
    text = f"{code} {message}"
    for pattern, check in _CREDENTIAL_HINTS:
        if pattern in text:
            return False, check
    if code.startswith(("Transport.", "Protocol.")):
        return True, Check.NETWORK
    if "Nonce" in text or code.startswith(_TRANSIENT):
        return True, Check.NETWORK
    if status is not None and (status >= 500 or status in (408, 425, 429)):
        return True, Check.NETWORK
    if status is not None and not 200 <= status < 300:
        return False, Check.ENDPOINT
    return False, Check.CREDENTIALS


@dataclass(frozen=True, slots=True)
class _Refusal:
    code: str
    message: str
    status: int | None


def login_request(
    credentials: Credentials, *, timestamp: int, nonce: int, request_id: str
) -> dict[str, Any]:
    """The signed AppGetToken body (Timestamp and Nonce are JSON numbers)."""
    params: dict[str, Any] = {
        "Action": LOGIN_ACTION,
        "RequestId": request_id,
        "AppKey": credentials.app_key,
        "Timestamp": timestamp,
        "Nonce": nonce,
        **credentials.user.fields(),
        "Password": credentials.password,
    }
    params = {name: value for name, value in params.items() if value != ""}
    params["Signature"] = sign(params, credentials.app_secret)
    return params


def parse_login_response(
    status: int, body: bytes, *, user: str, obtained_at: float
) -> Session | _Refusal:
    """A `Session` from `{"Response": {"Data": {"Token", "ExpireAt"}}}` (or the wrapped
    `{"code": 0, "data": …}` form), else the refusal's code and message. Never raises."""
    try:
        fields = _response_fields(json.loads(body.decode("utf-8-sig")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        code = "Protocol.NonJSONBody" if 200 <= status < 300 else f"HTTP.{status}"
        return _Refusal(code, "response is not JSON: " + snippet(body), status)
    except _NotApi as problem:
        code = "Protocol.UnexpectedShape" if 200 <= status < 300 else f"HTTP.{status}"
        return _Refusal(code, str(problem), status)
    error = fields.get("Error")
    if error is not None:
        return _error_refusal(error, status)
    return _session_of(fields.get("Data"), status, user, obtained_at)


class _NotApi(ValueError):
    pass


def _response_fields(document: Any) -> dict[str, Any]:
    if isinstance(document, dict) and isinstance(document.get("Response"), dict):
        return dict(document["Response"])
    if isinstance(document, dict) and ("data" in document or "code" in document):
        data = document.get("data")
        if isinstance(data, dict) and isinstance(data.get("Response"), dict):
            data = data["Response"]
        if document.get("code") not in (0, "0", None) and not (
            isinstance(data, dict) and "Error" in data
        ):
            code = clean_text(str(document.get("code")), 40)
            return {"Error": {"Code": f"RemoteError.{code}", "Message": str(document.get("msg"))}}
        if isinstance(data, dict):
            return data if "Error" in data or "Data" in data else {"Data": data}
    raise _NotApi("response has no Response object")


def _error_refusal(error: Any, status: int) -> _Refusal:
    code = error.get("Code") if isinstance(error, dict) else None
    message = error.get("Message") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code.strip():
        return _Refusal("Protocol.UnexpectedShape", "response Error has no Code", status)
    return _Refusal(
        clean_text(code, 100), clean_text(message if isinstance(message, str) else ""), status
    )


def _session_of(data: Any, status: int, user: str, obtained_at: float) -> Session | _Refusal:
    if not 200 <= status < 300:
        return _Refusal(f"HTTP.{status}", "a success body with an error status", status)
    token = data.get("Token") if isinstance(data, dict) else None
    expire_at = data.get("ExpireAt") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        return _Refusal("Protocol.UnexpectedShape", "response Data has no Token", status)
    if isinstance(expire_at, str) and expire_at.isascii() and expire_at.isdigit():
        expire_at = int(expire_at) if len(expire_at) <= 20 else None
    if isinstance(expire_at, bool) or not isinstance(expire_at, (int, float)):
        return _Refusal("Protocol.UnexpectedShape", "response Data has no ExpireAt", status)
    try:
        expires = float(expire_at)
    except OverflowError:  # an integer with hundreds of digits
        expires = math.inf
    if not math.isfinite(expires):
        return _Refusal("Protocol.UnexpectedShape", "response Data has no usable ExpireAt", status)
    return Session(token, expires, obtained_at, user)


# --------------------------------------------------------------------------- token sources


Post = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


class AppLogin:
    """Tokens from `AppGetToken`, renewed during a run (see the module docstring).

    `clock` is the wall clock (Unix seconds) used for Timestamp and ExpireAt; `post` sends
    one body to a URL and returns (status, body), by default over a short-lived aiohttp
    transport, so one `AppLogin` may serve several event loops one after the other.
    """

    def __init__(
        self,
        credentials: Credentials,
        endpoint: str,
        *,
        timeout: float = LOGIN_TIMEOUT,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], int] | None = None,
        post: Post | None = None,
        attempts: int = LOGIN_ATTEMPTS,
        backoff: float = LOGIN_BACKOFF,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._timeout = timeout
        self._clock = clock
        self._nonce = nonce or _random_nonce
        self._post = post or self._http_post
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._session: Session | None = None
        self._confirmed = False  # a request with the current token was answered
        self._failure: LoginError | None = None
        self._tokens: list[str] = []
        self._locks: dict[int, asyncio.Lock] = {}
        self.logins = 0  # successful logins so far

    def __repr__(self) -> str:
        return f"AppLogin({self.endpoint!r}, user={str(self._credentials.user)!r})"

    @property
    def session(self) -> Session | None:
        return self._session

    def secrets(self) -> tuple[str, ...]:
        token_forms = [form for token in self._tokens for form in (token, json.dumps(token)[1:-1])]
        return (*self._credentials.secrets(), *token_forms)

    async def token(self) -> str:
        session = self._usable()
        if session is not None:
            return session.token
        async with self._lock():
            session = self._usable()
            if session is None:
                session = await self._login(reactive=False)
            return session.token

    def accepted(self, token: str) -> None:
        if self._session is not None and self._session.token == token:
            self._confirmed = True

    async def refused(self, token: str) -> bool:
        async with self._lock():
            self._raise_failure()
            current = self._session
            if current is not None and current.token != token:
                return True  # another request has renewed it already
            if current is not None and current.reactive and not self._confirmed:
                self._fail(
                    LoginError(
                        "InvalidParameterValue.InvalidAccessToken",
                        "the token of the new login was refused at once",
                        Check.CREDENTIALS,
                    )
                )
            log.debug("login: the token was refused (InvalidAccessToken); logging in again")
            await self._login(reactive=True)
            return True

    def _usable(self) -> Session | None:
        self._raise_failure()
        session = self._session
        if session is None or self._clock() >= session.renew_at():
            return None
        return session

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: LoginError) -> None:
        self._failure = error
        raise error

    def _lock(self) -> asyncio.Lock:
        """One lock per event loop: single flight within a run, and reusable across runs."""
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            self._locks = {loop: (lock := asyncio.Lock())}
        return lock

    async def _login(self, *, reactive: bool) -> Session:
        for attempt in range(1, self._attempts + 1):
            outcome = await self._exchange()
            if isinstance(outcome, Session):
                return self._start(dataclasses.replace(outcome, reactive=reactive))
            transient, check = login_failure(outcome.code, outcome.message, outcome.status)
            if not transient or attempt == self._attempts:
                self._fail(LoginError(outcome.code, outcome.message, check))
            await asyncio.sleep(random.uniform(0, self._backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _start(self, session: Session) -> Session:
        self._session = session
        self._confirmed = False
        self._tokens.append(session.token)
        self.logins += 1
        log.debug(
            "login: logged in as %s until %s (login %d)",
            session.user,
            session.expires_utc().isoformat(timespec="seconds"),
            self.logins,
        )
        return session

    async def _exchange(self) -> Session | _Refusal:
        credentials = self._credentials
        now = self._clock()
        fields = login_request(
            credentials, timestamp=int(now), nonce=self._nonce(), request_id=str(uuid.uuid4())
        )
        self._log_request(fields)
        content = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            status, body = await self._post(self.endpoint, content)
        except Exception as exc:
            code = transport_error_code(exc)
            if code is None:
                raise
            detail = clean_text(redact(str(exc), self.secrets())) or type(exc).__name__
            return _Refusal(code, detail, None)
        outcome = parse_login_response(status, body, user=str(credentials.user), obtained_at=now)
        if isinstance(outcome, _Refusal):
            outcome = _Refusal(
                outcome.code, redact(outcome.message, self.secrets()), outcome.status
            )
            log.debug("login: refused: status=%s code=%s %s", status, outcome.code, outcome.message)
        return outcome

    def _log_request(self, fields: Mapping[str, Any]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            shown = {**fields, "Password": MASK, "Signature": MASK}
            text = json.dumps(shown, ensure_ascii=False)
            log.debug("login: request %s %s", self.endpoint, redact(text, self.secrets()))

    async def _http_post(self, url: str, content: bytes) -> tuple[int, bytes]:
        transport = AiohttpTransport(max_connections=1, total_timeout=self._timeout)
        async with (
            httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(self._timeout),
                headers={
                    "User-Agent": f"rrpcsync/{__version__}",
                    "Content-Type": "application/json",
                },
                follow_redirects=False,
            ) as http,
            http.stream("POST", url, content=content) as response,
        ):
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
            return response.status_code, body[:MAX_BODY]


def _random_nonce() -> int:
    """A random positive integer (the docs' example uses 8 digits)."""
    return secrets.randbelow(2**31 - 1) + 1


def token_source(auth: Auth, login_endpoint: str, *, timeout: float = LOGIN_TIMEOUT) -> TokenSource:
    if isinstance(auth, StaticAuth):
        return StaticToken(auth.token)
    return AppLogin(auth.credentials, login_endpoint, timeout=timeout)


def describe(auth: Auth, endpoints: Endpoints, say: Callable[[str], None]) -> None:
    """Warnings (a credentials file others may read) to `say`; which source is used to the
    log, shown with -v. Never a value."""
    for note in auth.notes:
        if note.startswith("warning: "):
            say(note)
        else:
            log.info("credentials: %s", note)
    if isinstance(auth, LoginAuth):
        user = auth.credentials.user
        log.info("credentials: %s (log in as %s at %s)", auth.source, user, endpoints.login)
    else:
        log.info("credentials: %s (a static access token)", auth.source)


async def login_once(source: AppLogin) -> Session:
    """Log in now (for `rrpcsync login`); raises LoginError."""
    await source.token()
    session = source.session
    assert session is not None
    return session
