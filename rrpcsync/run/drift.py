"""Drift detection and scheduled correction (docs/drift.md).

`probe_devices` asks devices for the config they hold (their manifest's `spec.probe`) with the
executor's pacing (`RateLimiter`), retries (`backoff_delay`, the same error classes) and never
two requests in flight to one device (each device is one task). `drift_plan` turns the answers,
and `--resync-after`, into `drift` changes that apply sends like updates;
`record_observations` keeps what each device reported in the state.

The probe phase ends before apply starts, so a probe and a send never overlap on a device.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from rrpcsync import secrets
from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import ApiResult
from rrpcsync.jsontext import canonical_json
from rrpcsync.manifests import probe as probes
from rrpcsync.model import Action, Change, DesiredDevice, DeviceRecord, Plan, Status, Unreachable
from rrpcsync.planning.planner import resend_change
from rrpcsync.planning.selection import Selection
from rrpcsync.run.executor import (
    ApplyOptions,
    AsyncPublisherContext,
    NoProgress,
    ProgressSink,
    Publisher,
    limiter_for,
    resend_class,
    should_retry,
    wait_before_retry,
)
from rrpcsync.state.store import State, parse_utc, utc_now

DRIFT = "drift"  # reason: the probe saw another config
STALE = "stale"  # reason: not probed, and last applied longer ago than --resync-after


@dataclass(frozen=True, slots=True)
class Observation:
    """One device's answer to its probe (or why there is none)."""

    key: str
    at: str  # RFC 3339 UTC
    reported: Any = None  # the config at the probe's pointer, as JSON
    observed: str | None = None  # `reported` as JSON text, secrets masked: stored and shown
    code: str | None = None  # no usable answer: the cloud's error code, or Probe.*
    message: str | None = None
    attempts: int = 0

    @property
    def answered(self) -> bool:
        return self.code is None


@dataclass(slots=True)
class ProbeReport:
    observations: dict[str, Observation] = field(default_factory=dict)
    requests: int = 0
    fatal: ApiResult | None = None  # the run stopped: every request would fail the same way
    elapsed: float = 0.0

    @property
    def unreachable(self) -> int:
        return sum(not obs.answered for obs in self.observations.values())


# --------------------------------------------------------------------------- what to probe


def in_sync(device: DesiredDevice, record: DeviceRecord | None) -> bool:
    """The state says the device acknowledged exactly its desired payload (plan: unchanged)."""
    return (
        record is not None
        and record.status is Status.APPLIED
        and record.payload_sha256 == device.payload_sha256
    )


def probe_targets(
    desired: Iterable[DesiredDevice], records: Mapping[str, DeviceRecord], selection: Selection
) -> list[DesiredDevice]:
    """Devices with a probe that the plan leaves unchanged: the others are sent anyway."""
    return [
        device
        for device in desired
        if device.probe is not None
        and in_sync(device, records.get(device.key))
        and selection.matches(device.key, device.labels)
    ]


# --------------------------------------------------------------------------- probing


class Prober:
    """Sends each target its probe once (retrying transient errors), `parallelism` at a time."""

    def __init__(
        self,
        targets: Sequence[DesiredDevice],
        publisher: Publisher,
        options: ApplyOptions,
        progress: ProgressSink | None = None,
    ) -> None:
        self.targets = targets
        self.publisher = publisher
        self.options = options
        self.progress = progress or NoProgress()
        self.limiter = limiter_for(options)
        self.report = ProbeReport()
        self.stopping = False

    async def run(self) -> ProbeReport:
        queue = deque(self.targets)
        workers = min(self.options.parallelism, len(self.targets))
        self.progress.started(len(self.targets))
        await asyncio.gather(*(self._worker(queue) for _ in range(workers)))
        return self.report

    async def _worker(self, queue: deque[DesiredDevice]) -> None:
        while queue and not self.stopping:
            device = queue.popleft()
            observation = await self._probe(device)
            self.report.observations[device.key] = observation
            self.progress.result(device.key, observation.answered, observation.code)

    async def _probe(self, device: DesiredDevice) -> Observation:
        assert device.probe is not None
        attempts = resends = 0
        while True:
            attempts += 1
            sent_at = await self.limiter.acquire()
            self.report.requests += 1
            result = resend_class(
                await self.publisher.publish(
                    device.product_id, device.device_name, device.probe.payload, str(uuid.uuid4())
                ),
                resends,
            )
            if result.error_class is ErrorClass.RESEND and not self.stopping:
                attempts -= 1  # the token was refused and renewed: not an attempt
                resends += 1
                continue
            self.limiter.observe(result, sent_at)
            if not should_retry(result, attempts, self.options, self.stopping):
                break
            await wait_before_retry(attempts, result, self.options, self.limiter)
        if result.error_class is ErrorClass.FATAL and self.report.fatal is None:
            self.report.fatal = result
            self.stopping = True
        return observation_of(device, result, attempts)


def observation_of(device: DesiredDevice, result: ApiResult, attempts: int) -> Observation:
    at = utc_now()
    if not result.ok:
        code, message = result.code or "Unknown", result.message or ""
        return Observation(device.key, at, code=code, message=message, attempts=attempts)
    assert device.probe is not None
    try:
        reported = probes.reported_config(result.reply_text, device.probe.pointer)
    except probes.ProbeReplyError as exc:
        return Observation(device.key, at, code=exc.code, message=exc.message, attempts=attempts)
    shown = shown_json(device, reported)
    return Observation(device.key, at, reported=reported, observed=shown, attempts=attempts)


def shown_json(device: DesiredDevice, value: Any) -> str:
    """JSON text of a reported config; a sensitive payload's secret values are masked."""
    if device.template is not None:
        value = probes.masked(value, secrets.known_values())
    return canonical_json(value)


PublisherFactory = Callable[[], AsyncPublisherContext]


def probe_devices(
    targets: Sequence[DesiredDevice],
    make_publisher: PublisherFactory,
    options: ApplyOptions,
    progress: ProgressSink | None = None,
) -> ProbeReport:
    """Probe every target; returns when all probes are done (nothing is left in flight)."""
    started = time.monotonic()
    report = asyncio.run(_probe_all(targets, make_publisher, options, progress))
    report.elapsed = time.monotonic() - started
    if progress is not None:
        progress.finished()
    return report


async def _probe_all(
    targets: Sequence[DesiredDevice],
    make_publisher: PublisherFactory,
    options: ApplyOptions,
    progress: ProgressSink | None,
) -> ProbeReport:
    async with make_publisher() as publisher:
        return await Prober(targets, publisher, options, progress).run()


def probe_summary(report: ProbeReport) -> str:
    answered = len(report.observations) - report.unreachable
    return (
        f"Probed {len(report.observations)} device(s): {answered} answered, "
        f"{report.unreachable} unreachable; {report.requests} request(s) in "
        f"{report.elapsed:.1f}s."
    )


# --------------------------------------------------------------------------- planning


def drift_plan(
    plan: Plan,
    desired: Iterable[DesiredDevice],
    records: Mapping[str, DeviceRecord],
    *,
    selection: Selection,
    observations: Mapping[str, Observation],
    resync_after: float | None = None,
    now: datetime | None = None,
) -> Plan:
    """`plan` with a `drift` change for each unchanged device that drifted (its probe saw
    another config) or is stale (not probed, last applied longer than `resync_after` seconds
    ago), and the probed devices that did not answer listed as unreachable."""
    now = now or datetime.now(timezone.utc)
    drifted: list[Change] = []
    unreachable: list[Unreachable] = []
    moved: Counter[str] = Counter()  # per manifest: unchanged devices now drifted/unreachable
    for device in desired:
        record = records.get(device.key)
        if record is None or not in_sync(device, record):
            continue
        if not selection.matches(device.key, device.labels):
            continue
        found = _drift_of(device, record, observations.get(device.key), resync_after, now)
        if found is None:
            continue
        if isinstance(found, Unreachable):
            unreachable.append(found)
        else:
            drifted.append(found)
        moved[device.manifest] += 1
    return _with_drift(plan, drifted, unreachable, moved, probed=len(observations))


def _drift_of(
    device: DesiredDevice,
    record: DeviceRecord,
    observation: Observation | None,
    resync_after: float | None,
    now: datetime,
) -> Change | Unreachable | None:
    if observation is not None:
        if not observation.answered:
            code, message = observation.code or "Unknown", observation.message or ""
            return Unreachable(device.key, device.manifest, device.source, code, message)
        assert device.probe is not None
        comparison = probes.compare(device.payload, observation.reported, device.probe.ignore)
        if comparison.matches:
            return None
        return _drift_change(device, record, DRIFT, shown_json(device, comparison.compared))
    if resync_after is not None and is_stale(record.applied_at, resync_after, now):
        return _drift_change(device, record, STALE, None)
    return None


def _drift_change(
    device: DesiredDevice, record: DeviceRecord, reason: str, observed: str | None
) -> Change:
    change = resend_change(device, record, Action.DRIFT)
    return replace(change, reason=reason, observed=observed, applied_at=record.applied_at)


def _with_drift(
    plan: Plan,
    drifted: Sequence[Change],
    unreachable: Sequence[Unreachable],
    moved: Counter[str],
    probed: int,
) -> Plan:
    """Drift changes go after create/update/retry (manifest order), orphans stay last."""
    others = [change for change in plan.changes if change.action is not Action.ORPHAN]
    orphans = [change for change in plan.changes if change.action is Action.ORPHAN]
    unchanged = {
        name: count - moved[name]
        for name, count in plan.unchanged_by_manifest.items()
        if count > moved[name]
    }
    summary = replace(
        plan.summary,
        noop=plan.summary.noop - sum(moved.values()),
        drift=len(drifted),
        probed=probed,
        unreachable=len(unreachable),
    )
    return replace(
        plan,
        changes=(*others, *drifted, *orphans),
        summary=summary,
        unchanged_by_manifest=unchanged,
        refreshed=True,
        unreachable=tuple(unreachable),
    )


def is_stale(applied_at: str | None, seconds: float, now: datetime) -> bool:
    """Last applied more than `seconds` before `now` (an unknown or unreadable time is stale)."""
    when = parse_utc(applied_at)
    return when is None or (now - when).total_seconds() > seconds


# --------------------------------------------------------------------------- state


def record_observations(state: State, observations: Mapping[str, Observation]) -> int:
    """Keep each answered probe's config (`observed`, `observed_at`) in the state's records."""
    count = 0
    for key, observation in observations.items():
        record = state.devices.get(key)
        if record is None or not observation.answered:
            continue
        state.put(key, record._replace(observed=observation.observed, observed_at=observation.at))
        count += 1
    return count
