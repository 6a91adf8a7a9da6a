"""The emulated cloud: answers AppPublishRRPCMessage bodies and records what happened.

`EmulatorCore` is independent of the HTTP server: `respond(body) -> Answer` (the response body
plus what the server must do to the connection when a fault is injected). All its methods run
on the server's event loop thread (the `Emulator` wrapper marshals calls there).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .fleet import Behaviour, Faults, Fleet
from .login import LoginDesk
from .protocol import (
    DEVICE_NOT_EXIST,
    DEVICE_OFFLINE,
    INTERNAL_ERROR,
    NO_SUBSCRIPTION,
    REQUEST_LIMIT,
    RRPC_TIMEOUT,
    ApiError,
    check_action,
    check_token,
    error_body,
    login_body,
    new_request_id,
    parse_request,
    required_strings,
    success_body,
)

# (start, end, device, request id, code, applied): `code` is "OK", the error code answered, or
# the injected fault ("Fault.Reset", ...); `applied` says whether the device took the payload.
LogEntry = tuple[float, float, "str | None", "str | None", str, bool]

# Codes of injected faults in the request log (and the keys of stats()["faults"]).
FAULT_RESET = "Fault.Reset"
FAULT_TRUNCATE = "Fault.Truncate"
FAULT_HTML_502 = "Fault.HTML502"
FAULT_SLOW = "Fault.Slow"
FAULT_INTERNAL_ERROR = "Fault.InternalError"
FAULT_RATE_LIMIT_BURST = "Fault.RateLimitBurst"
_FAULT_CODES = {
    "reset": FAULT_RESET,
    "truncate": FAULT_TRUNCATE,
    "html_502": FAULT_HTML_502,
    "slow": FAULT_SLOW,
    "internal_error": FAULT_INTERNAL_ERROR,
}
_ALWAYS_AFTER = frozenset({FAULT_TRUNCATE, FAULT_SLOW})  # the device handles these requests

# What the server does with an answer.
SEND = "send"
RESET = "reset"  # abort the connection (TCP RST), no response
TRUNCATE = "truncate"  # announce the full Content-Length, send part of the body, close

HTML_502_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """The response to one request, and how to deliver it."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    action: str = SEND
    delay: float = 0.0  # seconds to wait before responding (the `slow` fault)


@dataclass
class DeviceStats:
    """What one device saw since the last reset (its memory survives resets)."""

    requests: int = 0
    ok: int = 0
    acked: list[str] = field(default_factory=list)
    last_payload: str | None = None  # the device's memory: the last payload it accepted
    failures_served: int = 0  # of its `fail_times`
    in_flight: int = 0

    def clear_counters(self) -> None:
        self.requests = self.ok = self.failures_served = 0
        self.acked = []

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "acked": list(self.acked),
            "last_payload": self.last_payload,
        }


class RateLimiter:
    """A token bucket: `rate` requests per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def allow(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Call:
    """What the request log needs to know about one request, filled in as it is checked."""

    __slots__ = ("applied", "device", "fault", "request_id")

    def __init__(self) -> None:
        self.device: str | None = None
        self.request_id: str | None = None
        self.fault: str | None = None  # the injected fault, if one was drawn
        self.applied = False  # the device accepted the payload (whatever the client hears)


class EmulatorCore:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._limiter = _limiter_for(fleet)
        self._devices: dict[str, DeviceStats] = {}
        self._log: deque[LogEntry] = deque(maxlen=fleet.log_limit)
        self._message_id = 0
        self.requests_total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.violations: list[str] = []
        self.fault_counts: Counter[str] = Counter()
        self._rng = random.Random(fleet.faults.seed)
        self._burst_left = 0  # requests still to refuse in the current rate-limit burst
        self.login_desk = LoginDesk()

    @property
    def fleet(self) -> Fleet:
        return self._fleet

    # ----------------------------------------------------------------------- the hot path

    async def publish(self, body: bytes) -> bytes:
        """Answer one API request body; never raises for bad input. Injected faults that are
        about the connection (reset, truncate, slow) need the server: see `respond`."""
        return (await self.respond(body)).body

    async def respond(self, body: bytes) -> Answer:
        """Answer one API request body, injecting the fleet's faults; never raises."""
        self.requests_total += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        started = time.monotonic()
        call = _Call()
        try:
            answer = await self._publish(body, call)
            code = "OK"
        except ApiError as error:
            code = error.code
            answer = error_body(self._wrapped, error, call.request_id or new_request_id())
        finally:
            self.in_flight -= 1
        if call.fault is not None:
            code = call.fault
            self.fault_counts[code] += 1
        entry = (started, time.monotonic(), call.device, call.request_id, code, call.applied)
        self._log.append(entry)
        return self._delivered(call, answer)

    def _delivered(self, call: _Call, body: bytes) -> Answer:
        fault = call.fault
        if fault is None or fault in (FAULT_INTERNAL_ERROR, FAULT_RATE_LIMIT_BURST):
            return Answer(body)  # the error body was made by raising ApiError
        if fault == FAULT_RESET:
            return Answer(b"", action=RESET)
        if fault == FAULT_HTML_502:
            return Answer(HTML_502_PAGE, status=502, content_type="text/html")
        if fault == FAULT_TRUNCATE:
            return Answer(body, action=TRUNCATE)
        return Answer(body, delay=self._fleet.faults.slow_seconds)  # FAULT_SLOW

    @property
    def _wrapped(self) -> bool:
        return self._fleet.shape == "wrapped"

    async def _publish(self, body: bytes, call: _Call) -> bytes:
        request = parse_request(body)
        request_id = request.get("RequestId")
        if isinstance(request_id, str):
            call.request_id = request_id
        fleet = self._fleet
        check_action(request)
        issued = check_token(request, fleet.token, fleet.token_expired)
        if issued is not None:
            self.login_desk.check(issued)
        product, name, payload = required_strings(request)
        key = call.device = f"{product}/{name}"
        behaviour = fleet.lookup(key, product, name)
        if behaviour is None:
            raise ApiError(DEVICE_NOT_EXIST, f"the device {key} does not exist")
        return await self._deliver(key, behaviour, payload, request["RequestId"], call)

    async def _deliver(
        self, key: str, behaviour: Behaviour, payload: str, request_id: str, call: _Call
    ) -> bytes:
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = DeviceStats()
        device.requests += 1
        if device.in_flight:
            self.violations.append(key)
        device.in_flight += 1
        try:
            if self._limiter is not None and not self._limiter.allow(time.monotonic()):
                raise ApiError(REQUEST_LIMIT, "the request rate limit is exceeded")
            faults = self._fleet.faults
            after = faults.active and self._draw_fault(faults, call)
            if call.fault is not None and not after:
                self._fail_before_delivery(call.fault)
                return b""  # reset or HTML 502: the server replaces the answer
            if call.fault != FAULT_INTERNAL_ERROR:
                return await self._act(device, behaviour, payload, request_id, call)
            with contextlib.suppress(ApiError):  # whatever the device said is lost
                await self._act(device, behaviour, payload, request_id, call)
            raise ApiError(INTERNAL_ERROR, "an internal error occurred (injected)")
        finally:
            device.in_flight -= 1

    def _draw_fault(self, faults: Faults, call: _Call) -> bool:
        """Draw this request's fault into `call.fault`; True if it strikes after the device
        handled the request (always three draws, so the sequence depends only on the seed and
        the order of requests)."""
        burst, pick, when = self._rng.random(), self._rng.random(), self._rng.random()
        if self._burst_left == 0 and burst < faults.rate_limit_burst:
            self._burst_left = faults.rate_limit_burst_length
        if self._burst_left > 0:
            self._burst_left -= 1
            call.fault = FAULT_RATE_LIMIT_BURST
            return False
        for kind, code in _FAULT_CODES.items():
            share: float = getattr(faults, kind)
            if pick < share:
                call.fault = code
                return code in _ALWAYS_AFTER or when < faults.after_apply
            pick -= share
        return False

    @staticmethod
    def _fail_before_delivery(fault: str) -> None:
        if fault == FAULT_RATE_LIMIT_BURST:
            raise ApiError(REQUEST_LIMIT, "the request rate limit is exceeded (injected burst)")
        if fault == FAULT_INTERNAL_ERROR:
            raise ApiError(INTERNAL_ERROR, "an internal error occurred (injected)")

    async def _act(
        self,
        device: DeviceStats,
        behaviour: Behaviour,
        payload: str,
        request_id: str,
        call: _Call,
    ) -> bytes:
        if behaviour.offline:
            raise ApiError(DEVICE_OFFLINE, "the device is offline")
        if behaviour.no_subscription:
            raise ApiError(NO_SUBSCRIPTION, "the device has not subscribed to the RRPC topic")
        if behaviour.latency > 0:
            await asyncio.sleep(behaviour.latency)
        if behaviour.rrpc_timeout:
            raise ApiError(RRPC_TIMEOUT, "the device did not reply in time")
        if device.failures_served < behaviour.fail_times:
            device.failures_served += 1
            raise ApiError(behaviour.fail_code, f"injected failure {device.failures_served}")
        if _is_probe(payload, self._fleet.probe_method):
            return self._answer_probe(device, behaviour, request_id)
        device.ok += 1
        device.acked.append(payload)
        device.last_payload = payload
        call.applied = True
        self._message_id += 1
        message_id = None if behaviour.null_message_id else self._message_id
        return success_body(self._wrapped, message_id, _reply(behaviour, payload), request_id)

    def _answer_probe(self, device: DeviceStats, behaviour: Behaviour, request_id: str) -> bytes:
        """`{"code":0,"config": <the last payload accepted, as JSON, or null>}`; memory stays."""
        self._message_id += 1
        message_id = None if behaviour.null_message_id else self._message_id
        config = {"code": 0, "config": _as_json(device.last_payload)}
        reply = json.dumps(config, ensure_ascii=False, separators=(",", ":"))
        reply_base64 = base64.b64encode(reply.encode("utf-8")).decode("ascii")
        return success_body(self._wrapped, message_id, reply_base64, request_id)

    # ----------------------------------------------------------------------- the app API

    def respond_login(self, body: bytes) -> Answer:
        """Answer one app API (`…/appapi`) body: AppGetToken. Never raises."""
        request_id = new_request_id()
        try:
            request = parse_request(body)
            if isinstance(request.get("RequestId"), str):
                request_id = request["RequestId"]
            data = self.login_desk.answer(request, self._fleet.login)
        except ApiError as error:
            return Answer(error_body(self._wrapped, error, request_id))
        return Answer(login_body(self._wrapped, data, request_id))

    # ----------------------------------------------------------------------- control

    def set_memory(self, key: str, payload: str | None) -> None:
        """Make device `key` hold `payload` as its config (None: forget it, a factory reset)."""
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = DeviceStats()
        device.last_payload = payload

    def stats(self, include_log: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot (the body of GET /_emulator/stats)."""
        per_device = {key: DeviceStats().to_dict() for key in self._fleet.devices}
        per_device.update((key, device.to_dict()) for key, device in self._devices.items())
        snapshot: dict[str, Any] = {
            "requests_total": self.requests_total,
            "per_device": per_device,
            "concurrency_violations": len(self.violations),
            "concurrency_violation_keys": list(self.violations),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(sorted(self.fault_counts.items())),
            "login": self.login_desk.stats(),
        }
        if include_log:
            snapshot["log"] = [
                {
                    "t": t,
                    "t_end": t_end,
                    "device": device,
                    "request_id": request_id,
                    "code": code,
                    "applied": applied,
                }
                for t, t_end, device, request_id, code, applied in self._log
            ]
        return snapshot

    def reset(self, memory: bool = False) -> None:
        """Clear counters, logs and injected-failure counters; `memory` also forgets payloads."""
        self.requests_total = 0
        self.max_in_flight = self.in_flight
        self.violations = []
        self._log = deque(maxlen=self._fleet.log_limit)
        self._limiter = _limiter_for(self._fleet)
        self._restart_faults()
        self.login_desk.reset_counters()
        for key, device in list(self._devices.items()):
            device.clear_counters()
            if memory:
                device.last_payload = None
            if device.last_payload is None and not device.in_flight:
                del self._devices[key]

    def configure(self, partial: Mapping[str, Any]) -> Fleet:
        """Apply a partial fleet dict at runtime; raises FleetError and then changes nothing."""
        old = self._fleet
        new = old.updated(partial)
        self._fleet = new
        if new.rate_limit != old.rate_limit:
            self._limiter = _limiter_for(new)
        if new.log_limit != old.log_limit:
            self._log = deque(self._log, maxlen=new.log_limit)
        if new.faults != old.faults:
            self._restart_faults()
        self._restart_failures(partial)
        return new

    def _restart_faults(self) -> None:
        """Fault counts cleared; the seeded sequence of draws starts again."""
        self.fault_counts = Counter()
        self._rng = random.Random(self._fleet.faults.seed)
        self._burst_left = 0

    def _restart_failures(self, partial: Mapping[str, Any]) -> None:
        """Devices whose behaviour was configured start counting `fail_times` again."""
        if "default" in partial:
            keys: Any = list(self._devices)
        else:
            keys = partial.get("devices") or {}
        for key in keys:
            device = self._devices.get(key)
            if device is not None:
                device.failures_served = 0


def _reply(behaviour: Behaviour, payload: str) -> str | None:
    if behaviour.null_reply:
        return None
    if behaviour.echo:
        return base64.b64encode(payload.encode("utf-8")).decode("ascii")
    return behaviour.reply_base64


def _is_probe(payload: str, method: str | None) -> bool:
    """A drift probe: a JSON object payload whose "method" is the fleet's probe_method."""
    if method is None or method not in payload:
        return False
    try:
        document = json.loads(payload)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("method") == method


def _as_json(payload: str | None) -> Any:
    if payload is None:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload  # a string payload is reported as a JSON string


def _limiter_for(fleet: Fleet) -> RateLimiter | None:
    return None if fleet.rate_limit is None else RateLimiter(fleet.rate_limit)
