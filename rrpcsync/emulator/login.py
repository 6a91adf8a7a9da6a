"""The emulator's login desk: `AppGetToken` on the app API endpoint (`…/appapi`).

Written from Tencent's public description of the app API (../shared/seeds/AppGetToken.md),
not from rrpcsync's client: like the rest of the emulator it imports nothing of rrpcsync, and
its signature check is its own code. What it does:

- users (an email, or a country code and phone number) with their passwords, one app's AppKey
  and AppSecret and the lifetime of the tokens it issues come from the fleet's `login:` section;
- every parameter but `Signature` is signed: the verifier recomputes
  base64(HMAC-SHA1(AppSecret, "k=v&k=v…")) over the non-empty parameters, names with `_`
  written as `.`, sorted by name, and compares in constant time;
- a `Timestamp` more than 300 s away from the emulator's clock is refused, and so is a `Nonce`
  this AppKey already used within that window (a replay);
- a token answers `InvalidParameterValue.InvalidAccessToken` once its lifetime is over.

A wrong password is answered as the cloud was seen to answer it: `InternalError` with the
message `InvalidParameterValue.UserLoginFailed|用户登录失败`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol import INVALID_TOKEN, ApiError

LOGIN_ACTION = "AppGetToken"
MAX_SKEW = 300  # seconds a Timestamp may be away from the emulator's clock
NONCE_WINDOW = 2 * MAX_SKEW  # a nonce is remembered this long (its timestamp may be ±MAX_SKEW)
NONCE_LIMIT = 200_000  # nonces remembered at most (the oldest are forgotten first)
DEFAULT_LIFETIME = 86400.0

REQUIRED_PARAM = "ErrorRequiredParamNotFound"
INVALID_ACTION = "InvalidAction"
INVALID_VALUE = "InvalidParameterValue"
APP_KEY_UNKNOWN = "InvalidParameterValue.AppKeyNotExist"
BAD_SIGNATURE = "InvalidParameterValue.SignatureFailure"
STALE_TIMESTAMP = "InvalidParameterValue.TimestampExpired"
NONCE_REUSED = "InvalidParameterValue.NonceReused"
LOGIN_FAILED_CODE = "InternalError"
LOGIN_FAILED_MESSAGE = "InvalidParameterValue.UserLoginFailed|用户登录失败"

LOGIN_KEYS = ("app_key", "app_secret", "token_lifetime", "users", "logins_allowed")
USER_KEYS = ("email", "country_code", "phone_number", "password")


class LoginSettingsError(ValueError):
    """The fleet's `login:` section is invalid (the message names the key)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Account:
    """One user: `email`, or `country_code` + `phone_number`; and the password."""

    password: str = field(repr=False)
    email: str | None = None
    country_code: str | None = None
    phone_number: str | None = None

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "email": self.email,
            "country_code": self.country_code,
            "phone_number": self.phone_number,
            "password": self.password,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def name(self) -> str:
        return self.email or f"+{self.country_code} {self.phone_number}"


@dataclass(frozen=True)
class LoginSettings:
    app_key: str
    app_secret: str = field(repr=False)
    token_lifetime: float = DEFAULT_LIFETIME
    users: tuple[Account, ...] = ()
    logins_allowed: int | None = None  # after this many logins, every login fails (tests)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_key": self.app_key,
            "app_secret": self.app_secret,
            "token_lifetime": self.token_lifetime,
            "users": [user.to_dict() for user in self.users],
            "logins_allowed": self.logins_allowed,
        }


def parse_login_settings(data: Any, where: str = "login") -> LoginSettings | None:
    """Validate the fleet's `login:` mapping; None (or absent) turns logins off."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise LoginSettingsError(f"{where}: expected a mapping with app_key, app_secret, users")
    _known_keys(data, LOGIN_KEYS, where)
    lifetime = data.get("token_lifetime", DEFAULT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not lifetime > 0:
        raise LoginSettingsError(f"{where}.token_lifetime: expected seconds > 0, got {lifetime!r}")
    allowed = data.get("logins_allowed")
    if allowed is not None and (isinstance(allowed, bool) or not isinstance(allowed, int)):
        raise LoginSettingsError(f"{where}.logins_allowed: expected a whole number or null")
    users = data.get("users") or []
    if not isinstance(users, list):
        raise LoginSettingsError(f"{where}.users: expected a list of users")
    return LoginSettings(
        app_key=_text(data.get("app_key"), f"{where}.app_key"),
        app_secret=_text(data.get("app_secret"), f"{where}.app_secret"),
        token_lifetime=float(lifetime),
        users=tuple(_account(user, f"{where}.users[{n}]") for n, user in enumerate(users)),
        logins_allowed=allowed,
    )


def _account(data: Any, where: str) -> Account:
    if not isinstance(data, Mapping):
        raise LoginSettingsError(f"{where}: expected a mapping with email or phone_number")
    _known_keys(data, USER_KEYS, where)
    password = _text(data.get("password"), f"{where}.password")
    if "email" in data:
        if "phone_number" in data or "country_code" in data:
            raise LoginSettingsError(f"{where}: give either email or country_code+phone_number")
        return Account(password, email=_text(data["email"], f"{where}.email"))
    return Account(
        password,
        country_code=_digits(data.get("country_code"), f"{where}.country_code"),
        phone_number=_digits(data.get("phone_number"), f"{where}.phone_number"),
    )


def _known_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise LoginSettingsError(
            f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(allowed)})"
        )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise LoginSettingsError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _digits(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise LoginSettingsError(f"{where}: expected digits (quote them in YAML), got {value!r}")
    return value


# --------------------------------------------------------------------------- the signature


def canonical_string(request: Mapping[str, Any]) -> str:
    """The text the client must have signed, rebuilt from the request as received."""
    pieces: dict[str, str] = {}
    for key, value in request.items():
        if key == "Signature":
            continue
        text = _wire_text(key, value)
        if text != "":
            pieces[key.replace("_", ".")] = text
    return "&".join(name + "=" + pieces[name] for name in sorted(pieces))


def _wire_text(key: str, value: Any) -> str:
    """A parameter as signed: strings as they are, whole numbers in decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise ApiError(INVALID_VALUE, f"the parameter {key} must be a string or a whole number")


def signature_matches(request: Mapping[str, Any], app_secret: str) -> bool:
    given = request.get("Signature")
    if not isinstance(given, str):
        return False
    mac = hmac.new(app_secret.encode(), canonical_string(request).encode(), hashlib.sha1)
    expected = base64.b64encode(mac.digest()).decode()
    return hmac.compare_digest(expected.encode(), given.encode())


# --------------------------------------------------------------------------- the desk


@dataclass
class _Issued:
    account: str
    expires: float  # wall clock


class LoginDesk:
    """Runtime state of the login endpoint: issued tokens, nonces seen, counters."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tokens: dict[str, _Issued] = {}
        self._nonces: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.logins = 0
        self.logins_total = 0  # never reset: `logins_allowed` counts these
        self.refusals: Counter[str] = Counter()

    # ----------------------------------------------------------------------- AppGetToken

    def answer(self, request: Mapping[str, Any], settings: LoginSettings | None) -> dict[str, Any]:
        """The `Data` of a successful AppGetToken; raises ApiError for every refusal."""
        try:
            return self._login(request, settings)
        except ApiError as error:
            self.refusals[error.code] += 1
            raise

    def _login(self, request: Mapping[str, Any], settings: LoginSettings | None) -> dict[str, Any]:
        action = request.get("Action")
        if action != LOGIN_ACTION:
            raise ApiError(INVALID_ACTION, f"the action {action!r} is not available here")
        for name in ("AppKey", "Timestamp", "Nonce", "Signature", "Type", "Password"):
            if request.get(name) in (None, ""):
                raise ApiError(REQUIRED_PARAM, f"the parameter {name} is missing")
        if settings is None or request["AppKey"] != settings.app_key:
            raise ApiError(APP_KEY_UNKNOWN, "the AppKey does not exist")
        if not signature_matches(request, settings.app_secret):
            raise ApiError(BAD_SIGNATURE, "the Signature does not match the parameters")
        now = self._clock()
        self._check_time(request["Timestamp"], now)
        self._check_nonce(settings.app_key, request["Nonce"], now)
        account = self._account(request, settings)
        return self._issue(account, settings.token_lifetime, now)

    @staticmethod
    def _check_time(value: Any, now: float) -> None:
        stamp = _whole_number(value, "Timestamp")
        if abs(now - stamp) > MAX_SKEW:
            raise ApiError(
                STALE_TIMESTAMP, f"the Timestamp is more than {MAX_SKEW} s away from server time"
            )

    def _check_nonce(self, app_key: str, value: Any, now: float) -> None:
        nonce = _whole_number(value, "Nonce")
        if nonce <= 0:
            raise ApiError(INVALID_VALUE, "the Nonce must be a positive integer")
        while self._nonces and (
            len(self._nonces) >= NONCE_LIMIT
            or next(iter(self._nonces.values())) < now - NONCE_WINDOW
        ):
            self._nonces.popitem(last=False)
        key = (app_key, str(nonce))
        if key in self._nonces:
            raise ApiError(NONCE_REUSED, "this Nonce was used already (a replayed request?)")
        self._nonces[key] = now

    def _account(self, request: Mapping[str, Any], settings: LoginSettings) -> Account:
        kind = request["Type"]
        if kind == "email":
            wanted = {"email": request.get("Email")}
        elif kind == "phone":
            wanted = {
                "country_code": request.get("CountryCode"),
                "phone_number": request.get("PhoneNumber"),
            }
        else:
            raise ApiError(INVALID_VALUE, "the parameter Type must be phone or email")
        for account in settings.users:
            if all(getattr(account, key) == value for key, value in wanted.items()):
                password_ok = hmac.compare_digest(
                    account.password.encode(), str(request["Password"]).encode()
                )
                exhausted = (
                    settings.logins_allowed is not None
                    and self.logins_total >= settings.logins_allowed
                )
                if password_ok and not exhausted:
                    return account
                break
        raise ApiError(LOGIN_FAILED_CODE, LOGIN_FAILED_MESSAGE)

    def _issue(self, account: Account, lifetime: float, now: float) -> dict[str, Any]:
        self._forget_expired(now)
        token = secrets.token_hex(20)
        self._tokens[token] = _Issued(account.name(), now + lifetime)
        self.logins += 1
        self.logins_total += 1
        return {"Token": token, "ExpireAt": int(now + lifetime)}

    def _forget_expired(self, now: float) -> None:
        """Tokens expired for over an hour are forgotten (they then count as unknown)."""
        for token in [t for t, issued in self._tokens.items() if issued.expires < now - 3600]:
            del self._tokens[token]

    # ----------------------------------------------------------------------- tokenapi

    def check(self, token: str) -> None:
        """Raise InvalidAccessToken unless `token` was issued here and has not expired."""
        issued = self._tokens.get(token)
        if issued is None:
            raise ApiError(INVALID_TOKEN, "the access token is invalid")
        if self._clock() >= issued.expires:
            raise ApiError(INVALID_TOKEN, "the access token has expired")

    # ----------------------------------------------------------------------- control

    def revoke(self) -> int:
        """Every issued token becomes invalid (as after a logout); returns how many."""
        count = len(self._tokens)
        self._tokens.clear()
        return count

    def issued_tokens(self) -> list[str]:
        """The tokens issued and not forgotten (for tests that look for leaks)."""
        return list(self._tokens)

    def stats(self) -> dict[str, Any]:
        return {"logins": self.logins, "refused": dict(sorted(self.refusals.items()))}

    def reset_counters(self) -> None:
        self.logins = 0
        self.refusals = Counter()


def _whole_number(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise ApiError(INVALID_VALUE, f"the parameter {name} must be a whole number")
