"""The emulated cloud: answers AppPublishRRPCMessage bodies and records what happened.

`EmulatorCore` is independent of the HTTP server: `publish(body) -> response body`. All its
methods run on the server's event loop thread (the `Emulator` wrapper marshals calls there).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .fleet import Behaviour, Fleet
from .protocol import (
    DEVICE_NOT_EXIST,
    DEVICE_OFFLINE,
    NO_SUBSCRIPTION,
    REQUEST_LIMIT,
    RRPC_TIMEOUT,
    ApiError,
    check_action,
    check_token,
    error_body,
    new_request_id,
    parse_request,
    required_strings,
    success_body,
)

LogEntry = tuple[float, float, "str | None", "str | None", str]


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

    __slots__ = ("device", "request_id")

    def __init__(self) -> None:
        self.device: str | None = None
        self.request_id: str | None = None


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

    @property
    def fleet(self) -> Fleet:
        return self._fleet

    # ----------------------------------------------------------------------- the hot path

    async def publish(self, body: bytes) -> bytes:
        """Answer one API request body; never raises for bad input."""
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
        self._log.append((started, time.monotonic(), call.device, call.request_id, code))
        return answer

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
        check_token(request, fleet.token, fleet.token_expired)
        product, name, payload = required_strings(request)
        key = call.device = f"{product}/{name}"
        behaviour = fleet.lookup(key, product, name)
        if behaviour is None:
            raise ApiError(DEVICE_NOT_EXIST, f"the device {key} does not exist")
        return await self._deliver(key, behaviour, payload, request["RequestId"])

    async def _deliver(
        self, key: str, behaviour: Behaviour, payload: str, request_id: str
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
            return await self._act(device, behaviour, payload, request_id)
        finally:
            device.in_flight -= 1

    async def _act(
        self, device: DeviceStats, behaviour: Behaviour, payload: str, request_id: str
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
        device.ok += 1
        device.acked.append(payload)
        device.last_payload = payload
        self._message_id += 1
        message_id = None if behaviour.null_message_id else self._message_id
        return success_body(self._wrapped, message_id, _reply(behaviour, payload), request_id)

    # ----------------------------------------------------------------------- control

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
        }
        if include_log:
            snapshot["log"] = [
                {"t": t, "t_end": t_end, "device": device, "request_id": request_id, "code": code}
                for t, t_end, device, request_id, code in self._log
            ]
        return snapshot

    def reset(self, memory: bool = False) -> None:
        """Clear counters, logs and injected-failure counters; `memory` also forgets payloads."""
        self.requests_total = 0
        self.max_in_flight = self.in_flight
        self.violations = []
        self._log = deque(maxlen=self._fleet.log_limit)
        self._limiter = _limiter_for(self._fleet)
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
        self._restart_failures(partial)
        return new

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


def _limiter_for(fleet: Fleet) -> RateLimiter | None:
    return None if fleet.rate_limit is None else RateLimiter(fleet.rate_limit)
