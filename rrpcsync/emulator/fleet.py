"""The emulator's fleet: which devices exist and how each one answers.

A fleet is read from a YAML file or a dict, validated strictly (unknown keys and wrong types are
errors naming the file and the key) and turned into immutable `Behaviour` records, so the
request path only looks things up. Runtime changes (`Fleet.updated`) build a new `Fleet`.

This module imports nothing from the rest of rrpcsync: the emulator stands in for the cloud.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .login import LoginSettings, LoginSettingsError, parse_login_settings

DEFAULT_TOKEN = "emulator-token"
DEFAULT_REPLY: dict[str, Any] = {"code": 0}
DEFAULT_LOG_LIMIT = 1_000_000  # request log entries kept (~300 bytes each); null: all
# Requests whose JSON payload has this "method" are drift probes: answered with the device's
# memory, {"code":0,"config": <its last accepted payload as JSON, or null>}, which they leave
# as it is. null: no probes, every payload is a config.
DEFAULT_PROBE_METHOD = "get_config"
SHAPES = ("response", "wrapped")

BEHAVIOUR_KEYS = (
    "reply",
    "reply_base64",
    "latency",
    "offline",
    "no_subscription",
    "rrpc_timeout",
    "fail_times",
    "fail_code",
    "null_message_id",
    "null_reply",
)
FLEET_KEYS = (
    "token",
    "token_expired",
    "shape",
    "rate_limit",
    "latency",
    "default",
    "devices",
    "auto_devices",
    "products",
    "log_limit",
    "faults",
    "probe_method",
    "login",
)
PRODUCT_KEYS = ("count", "prefix", "width")
# Injected faults, drawn per request in this order from one uniform number: their sum is <= 1.
FAULT_KINDS = ("reset", "truncate", "html_502", "slow", "internal_error")
FAULT_KEYS = (
    "seed",
    *FAULT_KINDS,
    "slow_seconds",
    "after_apply",
    "rate_limit_burst",
    "rate_limit_burst_length",
)


class EmulatorError(ValueError):
    """Any problem the emulator reports to its caller (not to API clients)."""


class FleetError(EmulatorError):
    """A fleet file or fleet dict is invalid; the message names the source and the key."""


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Behaviour:
    """How one device answers, resolved from the fleet's `default` and its own settings."""

    reply_base64: str | None = None  # the reply as sent; unused when `echo`
    echo: bool = False
    latency: float = 0.0
    offline: bool = False
    no_subscription: bool = False
    rrpc_timeout: bool = False
    fail_times: int = 0
    fail_code: str = "InternalError"
    null_message_id: bool = False
    null_reply: bool = False


@dataclass(frozen=True)
class ProductRange:
    """Devices `prefix + zero-padded number` for numbers 1..count (e.g. dev-001)."""

    count: int
    prefix: str = "dev-"
    width: int = 3

    def contains(self, name: str) -> bool:
        if not name.startswith(self.prefix):
            return False
        digits = name[len(self.prefix) :]
        if not (digits.isascii() and digits.isdigit()):
            return False
        number = int(digits)
        return 1 <= number <= self.count and digits == f"{number:0{self.width}d}"

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "prefix": self.prefix, "width": self.width}


@dataclass(frozen=True)
class Faults:
    """Fleet-wide injected faults: each request draws at most one, from a seeded RNG.

    Probabilities are per request (to an existing device, with a valid token):

    - `reset`: the connection is aborted (TCP RST) without a response.
    - `truncate`: the device handles the request as usual; the response announces a
      Content-Length larger than the bytes sent, then the connection closes.
    - `html_502`: a gateway's HTML page with HTTP 502.
    - `slow`: the device handles the request as usual; the response waits `slow_seconds`
      (longer than the client's timeout) before it is sent.
    - `internal_error`: an `InternalError` answer.
    - `after_apply`: the share of `reset`, `html_502` and `internal_error` faults that strike
      after the device applied the payload (its reply is lost); the others strike before the
      request reaches the device. `truncate` and `slow` always strike after.
    - `rate_limit_burst`: the chance that a request starts a burst of
      `rate_limit_burst_length` requests (fleet-wide, this one included) answered
      `RequestLimitExceeded` without reaching their devices.

    `seed` makes the sequence of draws repeatable (null: a random seed); `reset` of the
    emulator starts the sequence again.
    """

    seed: int | None = None
    reset: float = 0.0
    truncate: float = 0.0
    html_502: float = 0.0
    slow: float = 0.0
    internal_error: float = 0.0
    slow_seconds: float = 3.0
    after_apply: float = 0.5
    rate_limit_burst: float = 0.0
    rate_limit_burst_length: int = 10

    @property
    def active(self) -> bool:
        return self.rate_limit_burst > 0 or any(getattr(self, kind) > 0 for kind in FAULT_KINDS)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in FAULT_KEYS}


NO_FAULTS = Faults()


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class Fleet:
    """Fleet-wide settings plus the raw settings of listed devices (kept for `updated`)."""

    token: str | None = DEFAULT_TOKEN  # a fixed token (null: only tokens from AppGetToken)
    token_expired: bool = False
    shape: str = "response"
    rate_limit: float | None = None
    latency: float = 0.0
    auto_devices: bool = False
    log_limit: int | None = DEFAULT_LOG_LIMIT
    default: Mapping[str, Any] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    products: Mapping[str, ProductRange] = field(default_factory=dict)
    faults: Faults = NO_FAULTS
    probe_method: str | None = DEFAULT_PROBE_METHOD
    login: LoginSettings | None = None  # AppGetToken's app, users and token lifetime
    source: str = field(default="<fleet>", compare=False)
    default_behaviour: Behaviour = field(init=False, repr=False, compare=False)
    behaviours: Mapping[str, Behaviour] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = _resolve(self.default, {}, self.latency)
        resolved = {
            key: _resolve(self.default, raw, self.latency) for key, raw in self.devices.items()
        }
        object.__setattr__(self, "default_behaviour", default)
        object.__setattr__(self, "behaviours", resolved)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<fleet>") -> Fleet:
        """Validate a fleet mapping (as loaded from YAML); raise FleetError naming `source`."""
        return _parse_fleet(data, source)

    def lookup(self, key: str, product: str, name: str) -> Behaviour | None:
        """The behaviour of device `key` (= product/name), or None if it does not exist."""
        behaviour = self.behaviours.get(key)
        if behaviour is not None:
            return behaviour
        if self.auto_devices:
            return self.default_behaviour
        product_range = self.products.get(product)
        if product_range is not None and product_range.contains(name):
            return self.default_behaviour
        return None

    def to_dict(self) -> dict[str, Any]:
        """The fleet as a plain dict that `from_dict` accepts again."""
        return {
            "token": self.token,
            "token_expired": self.token_expired,
            "shape": self.shape,
            "rate_limit": self.rate_limit,
            "latency": self.latency,
            "auto_devices": self.auto_devices,
            "log_limit": self.log_limit,
            "default": dict(self.default),
            "devices": {key: dict(raw) for key, raw in self.devices.items()},
            "products": {key: product.to_dict() for key, product in self.products.items()},
            "faults": self.faults.to_dict(),
            "probe_method": self.probe_method,
            "login": None if self.login is None else self.login.to_dict(),
        }

    def updated(self, partial: Any) -> Fleet:
        """A new fleet with `partial` applied (see `merge_fleet_dicts`); the source is kept."""
        if not isinstance(partial, Mapping):
            raise FleetError(f"{self.source}: a fleet update must be a mapping")
        _check_keys(partial, FLEET_KEYS, "the update", self.source)
        return _parse_fleet(merge_fleet_dicts(self.to_dict(), partial), self.source)


def merge_fleet_dicts(base: Mapping[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a partial fleet dict over a full one.

    Fleet-wide scalars are replaced. `default`, `faults` and each device's settings merge key
    by key, where a null value deletes the key (`faults: null` turns every fault off); a device
    given as null loses all its own settings.
    `devices` and `products` merge entry by entry (entries not named stay as they are).
    """
    merged = dict(base)
    for key, value in partial.items():
        if key in ("default", "faults"):
            merged[key] = _merge_settings(base.get(key) or {}, value)
        elif key == "devices" and isinstance(value, Mapping):
            devices = dict(base.get(key) or {})
            for device, settings in value.items():
                devices[device] = _merge_settings(devices.get(device) or {}, settings)
            merged[key] = devices
        elif key == "products" and isinstance(value, Mapping):
            merged[key] = {**(base.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def _merge_settings(base: Mapping[str, Any], update: Any) -> Any:
    if update is None:
        return {}
    if not isinstance(update, Mapping):
        return update  # invalid: reported by validation with the right key
    merged = dict(base)
    if "reply" in update:
        merged.pop("reply_base64", None)
    if "reply_base64" in update:
        merged.pop("reply", None)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def load_fleet(source: Fleet | Mapping[str, Any] | str | Path) -> Fleet:
    """Load a fleet from a YAML file path, a dict, or pass a Fleet through."""
    if isinstance(source, Fleet):
        return source
    if isinstance(source, Mapping):
        return Fleet.from_dict(source, "<fleet dict>")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"{path}: cannot read the fleet file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML: {exc}") from None
    return Fleet.from_dict({} if data is None else data, str(path))


# --------------------------------------------------------------------------- validation


def _parse_fleet(data: Any, source: str) -> Fleet:
    if not isinstance(data, Mapping):
        raise FleetError(f"{source}: the fleet must be a mapping, got {_type_name(data)}")
    _check_keys(data, FLEET_KEYS, "the fleet", source)
    check = _Checker(source)
    rate_limit = data.get("rate_limit")
    log_limit = data.get("log_limit", DEFAULT_LOG_LIMIT)
    return Fleet(
        token=_parse_token(data.get("token", DEFAULT_TOKEN), check),
        token_expired=check.boolean(data.get("token_expired", False), "token_expired"),
        shape=check.choice(data.get("shape", "response"), SHAPES, "shape"),
        rate_limit=None if rate_limit is None else check.positive(rate_limit, "rate_limit"),
        latency=check.duration(data.get("latency", 0.0), "latency"),
        auto_devices=check.boolean(data.get("auto_devices", False), "auto_devices"),
        log_limit=None if log_limit is None else check.count(log_limit, "log_limit"),
        default=_parse_settings(data.get("default"), "default", source),
        devices=_parse_devices(data.get("devices"), source),
        products=_parse_products(data.get("products"), source),
        faults=_parse_faults(data.get("faults"), source),
        probe_method=_parse_probe_method(data.get("probe_method", DEFAULT_PROBE_METHOD), check),
        login=_parse_login(data.get("login"), source),
        source=source,
    )


def _parse_token(value: Any, check: _Checker) -> str | None:
    return None if value is None else check.string(value, "token")


def _parse_login(value: Any, source: str) -> LoginSettings | None:
    try:
        return parse_login_settings(value)
    except LoginSettingsError as exc:
        raise FleetError(f"{source}: {exc}") from None


def _parse_probe_method(value: Any, check: _Checker) -> str | None:
    if value is None:
        return None
    if not check.string(value, "probe_method"):
        raise FleetError(f"{check.source}: probe_method: must not be empty (null: no probes)")
    return str(value)


def _parse_faults(data: Any, source: str) -> Faults:
    if data is None:
        return NO_FAULTS
    if not isinstance(data, Mapping):
        raise FleetError(f"{source}: faults: expected a mapping of fault settings, got {data!r}")
    _check_keys(data, FAULT_KEYS, "faults", source)
    check = _Checker(source)
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise check._fail("faults.seed", "a whole number (or null for a random seed)", seed)
    shares = {key: check.share(data.get(key, 0.0), f"faults.{key}") for key in FAULT_KINDS}
    if sum(shares.values()) > 1.0 + 1e-9:
        raise FleetError(
            f"{source}: faults: the shares of {', '.join(FAULT_KINDS)} add up to "
            f"{sum(shares.values()):g}, more than 1"
        )
    length = check.count(data.get("rate_limit_burst_length", 10), "faults.rate_limit_burst_length")
    if length < 1:
        raise check._fail("faults.rate_limit_burst_length", "a whole number >= 1", length)
    return Faults(
        seed=seed,
        reset=shares["reset"],
        truncate=shares["truncate"],
        html_502=shares["html_502"],
        slow=shares["slow"],
        internal_error=shares["internal_error"],
        slow_seconds=check.duration(data.get("slow_seconds", 3.0), "faults.slow_seconds"),
        after_apply=check.share(data.get("after_apply", 0.5), "faults.after_apply"),
        rate_limit_burst=check.share(data.get("rate_limit_burst", 0.0), "faults.rate_limit_burst"),
        rate_limit_burst_length=length,
    )


def _parse_devices(data: Any, source: str) -> dict[str, Mapping[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise FleetError(f"{source}: devices: expected a mapping 'ProductId/DeviceName': settings")
    devices: dict[str, Mapping[str, Any]] = {}
    for key, settings in data.items():
        if not isinstance(key, str) or len(key.split("/")) != 2 or "" in key.split("/"):
            raise FleetError(f"{source}: devices: key {key!r} is not 'ProductId/DeviceName'")
        devices[key] = _parse_settings(settings, f"devices[{key!r}]", source)
    return devices


def _parse_settings(data: Any, where: str, source: str) -> dict[str, Any]:
    """Validate one behaviour mapping; keep it raw (it is merged with `default` later)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise FleetError(f"{source}: {where}: expected a mapping of settings, got {data!r}")
    _check_keys(data, BEHAVIOUR_KEYS, where, source)
    if "reply" in data and "reply_base64" in data:
        raise FleetError(f"{source}: {where}: set either reply or reply_base64, not both")
    check = _Checker(source)
    for key, value in data.items():
        _check_setting(check, key, value, f"{where}.{key}")
    return dict(data)


def _check_setting(check: _Checker, key: str, value: Any, where: str) -> None:
    if key == "reply":
        check.reply(value, where)
    elif key == "reply_base64":
        _decode_base64(check.string(value, where), where, check.source)
    elif key == "latency":
        check.duration(value, where)
    elif key == "fail_times":
        check.count(value, where)
    elif key == "fail_code":
        if not check.string(value, where):
            raise FleetError(f"{check.source}: {where}: must not be empty")
    else:
        check.boolean(value, where)


def _parse_products(data: Any, source: str) -> dict[str, ProductRange]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise FleetError(f"{source}: products: expected a mapping ProductId: {{count: N}}")
    check = _Checker(source)
    products: dict[str, ProductRange] = {}
    for product, spec in data.items():
        where = f"products[{product!r}]"
        if not isinstance(product, str) or not product or "/" in product:
            raise FleetError(f"{source}: products: {product!r} is not a ProductId")
        if not isinstance(spec, Mapping) or "count" not in spec:
            raise FleetError(f"{source}: {where}: expected a mapping with count (and prefix)")
        _check_keys(spec, PRODUCT_KEYS, where, source)
        products[product] = ProductRange(
            count=check.count(spec["count"], f"{where}.count"),
            prefix=check.string(spec.get("prefix", "dev-"), f"{where}.prefix"),
            width=check.count(spec.get("width", 3), f"{where}.width"),
        )
    return products


def _resolve(default: Mapping[str, Any], own: Mapping[str, Any], fleet_latency: float) -> Behaviour:
    settings = _merge_settings(default, own)
    reply = settings.get("reply", DEFAULT_REPLY)  # merging left reply or reply_base64, not both
    echo = reply == "echo"
    reply_base64: str | None = settings.get("reply_base64")
    if reply_base64 is None and not echo:
        reply_base64 = base64.b64encode(_reply_bytes(reply)).decode("ascii")
    return Behaviour(
        reply_base64=reply_base64,
        echo=echo,
        latency=float(settings.get("latency", fleet_latency)),
        offline=bool(settings.get("offline", False)),
        no_subscription=bool(settings.get("no_subscription", False)),
        rrpc_timeout=bool(settings.get("rrpc_timeout", False)),
        fail_times=int(settings.get("fail_times", 0)),
        fail_code=str(settings.get("fail_code", "InternalError")),
        null_message_id=bool(settings.get("null_message_id", False)),
        null_reply=bool(settings.get("null_reply", False)),
    )


def _reply_bytes(reply: Any) -> bytes:
    if isinstance(reply, str):
        return reply.encode("utf-8")
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_base64(text: str, where: str, source: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FleetError(f"{source}: {where}: not valid base64: {text!r}") from None


def _check_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], where: str, source: str) -> None:
    for key in data:
        if key not in allowed:
            expected = ", ".join(allowed)
            raise FleetError(
                f"{source}: {where}: unknown key {key!r} (expected one of: {expected})"
            )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Checker:
    """Type checks that raise FleetError naming the source and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _fail(self, where: str, expected: str, value: Any) -> FleetError:
        return FleetError(f"{self.source}: {where}: expected {expected}, got {value!r}")

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self._fail(where, "a string", value)
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self._fail(where, "true or false", value)
        return value

    def choice(self, value: Any, choices: tuple[str, ...], where: str) -> str:
        if value not in choices:
            raise self._fail(where, " or ".join(choices), value)
        return str(value)

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._fail(where, "a whole number >= 0", value)
        return value

    def duration(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(where, "a number of seconds >= 0", value)
        if not 0 <= value < math.inf:
            raise self._fail(where, "a number of seconds >= 0", value)
        return float(value)

    def share(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(where, "a probability between 0 and 1", value)
        if not 0 <= value <= 1:
            raise self._fail(where, "a probability between 0 and 1", value)
        return float(value)

    def positive(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(where, "a number > 0 (or null for no limit)", value)
        if not 0 < value < math.inf:
            raise self._fail(where, "a number > 0 (or null for no limit)", value)
        return float(value)

    def reply(self, value: Any, where: str) -> None:
        if isinstance(value, str):
            return
        if not isinstance(value, (Mapping, list)):
            raise self._fail(where, "a string, 'echo', a mapping or a list", value)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise FleetError(f"{self.source}: {where}: not JSON-able: {exc}") from None
