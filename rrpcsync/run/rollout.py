"""Safe rollouts: the plan's changes go out step by step (schedule.py) through the executor.

- Abort criteria (`--max-failures`, `--max-failure-rate`, a manifest's own) are checked after
  every result, when the reply arrives: crossing one stops dispatching at once, so at most the
  requests already in flight (fewer than `--parallelism`) finish after it.
- A canary step continues only if every canary device succeeded.
- A manifest is sent only after the manifests it depends on finished without failures;
  otherwise its devices are `blocked` (not sent) and so are its own dependents.
- One publisher, rate limiter and journal serve every step: pacing and durability are the
  executor's, unchanged (apply.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from rrpcsync.cloud.results import ApiResult
from rrpcsync.manifests.policy import DEFAULT_POLICY, effective_min_sample
from rrpcsync.model import Change, ManifestPolicy, Plan, RolloutSpec
from rrpcsync.planning.schedule import Step, by_level, level_steps
from rrpcsync.run.executor import (
    ApplyOptions,
    ApplyReport,
    Executor,
    GroupCommit,
    InterruptHandlers,
    NoProgress,
    ProgressSink,
    Publisher,
    PublisherFactory,
    deferred_keys,
    limiter_for,
    sendable_now,
)
from rrpcsync.state import JsonFileStore, Recorder, State

Announce = Callable[[str], None]


# --------------------------------------------------------------------------- abort criteria


@dataclass(slots=True)
class Tally:
    """Failures within one scope (the run, or one manifest) against its limits."""

    name: str  # "--max-failures" style prefix: "" for the flags, "manifest m: " for spec.rollout
    max_failures: int | None
    max_rate: float | None
    min_sample: int
    flags: bool = True  # limits from the command line (else from spec.rollout)
    results: int = 0
    failures: int = 0

    def add(self, ok: bool) -> str | None:
        """Count one result; the reason when this one crosses a limit."""
        self.results += 1
        self.failures += not ok
        return self.crossed()

    def crossed(self) -> str | None:
        if self.max_failures is not None and self.failures > self.max_failures:
            option = "--max-failures" if self.flags else "maxFailures"
            return f"{self.name}more than {option} {self.max_failures}"
        if self.max_rate is not None and self.results >= self.min_sample:
            rate = 100 * self.failures / self.results
            if rate > self.max_rate:
                option = "--max-failure-rate" if self.flags else "maxFailureRate"
                return (
                    f"{self.name}failure rate {rate:.1f}% above {option} {self.max_rate:g}% "
                    f"({self.failures} of {self.results} results)"
                )
        return None


class Guard:
    """Every abort criterion of a run; `observe` names the first one crossed."""

    def __init__(self, flags: RolloutSpec, policies: Mapping[str, ManifestPolicy]) -> None:
        self.run = Tally(
            "", flags.max_failures, flags.max_failure_rate, effective_min_sample(flags.min_sample)
        )
        self.manifests = {
            name: tally
            for name, policy in policies.items()
            if (tally := _manifest_tally(name, policy.rollout, flags)) is not None
        }
        self.reason: str | None = None

    def observe(self, change: Change, ok: bool) -> str | None:
        """Count a result; the reason the first time any criterion is crossed."""
        reasons = [self.run.add(ok)]
        tally = self.manifests.get(change.manifest or "")
        if tally is not None:
            reasons.append(tally.add(ok))
        crossed = next((reason for reason in reasons if reason), None)
        if crossed is None or self.reason is not None:
            return None
        self.reason = crossed
        return crossed


def _manifest_tally(name: str, spec: RolloutSpec, flags: RolloutSpec) -> Tally | None:
    """A manifest's own limits, for the ones the command line does not override."""
    max_failures = spec.max_failures if flags.max_failures is None else None
    max_rate = spec.max_failure_rate if flags.max_failure_rate is None else None
    if max_failures is None and max_rate is None:
        return None
    sample = effective_min_sample(flags.min_sample, spec.min_sample)
    return Tally(f"manifest {name}: ", max_failures, max_rate, sample, flags=False)


def abort_message(reason: str, report: ApplyReport) -> str:
    """`rollout aborted after 4 failures (more than --max-failures 3); …; top errors: …`."""
    count = len(report.failed) + len(report.unknown)
    noun = "failure" if count == 1 else "failures"
    top = ", ".join(f"{code} ({n})" for code, n in report.failures_by_code.most_common(3))
    parts = [f"rollout aborted after {count} {noun} ({reason})"]
    parts.append(f"{len(report.not_sent)} device(s) not sent")
    if top:
        parts.append(f"top errors: {top}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the run


class _OneBar:
    """Progress over the whole rollout, however many executors report into it."""

    def __init__(self, sink: ProgressSink, total: int) -> None:
        self.sink = sink
        sink.started(total)

    def started(self, total: int) -> None:
        pass

    def result(self, key: str, ok: bool, code: str | None) -> None:
        self.sink.result(key, ok, code)

    def finished(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RolloutInputs:
    """What a rollout works on, besides the publisher and journal it runs with."""

    changes: Sequence[Change]
    policies: Mapping[str, ManifestPolicy]
    flags: RolloutSpec
    state: State
    options: ApplyOptions
    progress: ProgressSink
    announce: Announce


class Rollout:
    """Runs the steps in turn; stops at the first abort, fatal error or interrupt."""

    def __init__(self, inputs: RolloutInputs, publisher: Publisher, commit: GroupCommit) -> None:
        self.inputs = inputs
        self.changes, self.policies, self.state = inputs.changes, inputs.policies, inputs.state
        self.publisher, self.commit = publisher, commit
        self.limiter = limiter_for(inputs.options)
        self.guard = Guard(inputs.flags, inputs.policies)
        self.report = ApplyReport(total=len(inputs.changes))
        self.current: Executor | None = None
        self.stopping = False
        self.reason: str | None = None  # why the rollout was aborted

    @property
    def in_flight(self) -> int:
        return self.current.in_flight if self.current is not None else 0

    def stop(self) -> None:
        """First SIGINT/SIGTERM: no new dispatch, in this step or any later one."""
        self.stopping = True
        if self.current is not None:
            self.current.stop()

    @property
    def halted(self) -> bool:
        report = self.report
        return self.stopping or bool(self.reason or report.fatal or report.interrupted)

    async def run(self) -> ApplyReport:
        failing: set[str] = set()  # manifests with failures this run (blocked ones too)
        levels = by_level(self.changes, self.policies)
        for index, (names, changes) in enumerate(levels):
            blocked = self._block(names, failing)
            sendable = [change for change in changes if change.manifest not in blocked]
            steps = level_steps(sendable, self.policies, self.inputs.flags)
            prefix = f"level {index + 1}/{len(levels)}, " if len(levels) > 1 else ""
            for step in steps:
                await self._run_step(step, prefix, len(steps) > 1 or len(levels) > 1)
            failing |= self._manifests_with_failures(sendable)
        if self.reason is not None:
            self.report.aborted = abort_message(self.reason, self.report)
        return self.report

    def _block(self, names: Iterable[str], failing: set[str]) -> set[str]:
        """Manifests of this level whose dependencies had failures: not sent."""
        blocked: set[str] = set()
        for name in names:
            bad = [d for d in self.policies.get(name, DEFAULT_POLICY).depends_on if d in failing]
            if not bad:
                continue
            blocked.add(name)
            keys = [change.key for change in self.changes if change.manifest == name]
            self.report.blocked.extend(keys)
            if keys and not self.halted:
                self.inputs.announce(
                    f"rollout: {name} blocked ({len(keys)} device(s) not sent): depends on "
                    f"{', '.join(bad)}, which had failures"
                )
        failing |= blocked
        return blocked

    def _manifests_with_failures(self, changes: Iterable[Change]) -> set[str]:
        report = self.report
        unsent = set(report.not_sent) | set(report.unknown)
        return {
            change.manifest or ""
            for change in changes
            if change.key in report.failed or change.key in unsent
        }

    async def _run_step(self, step: Step, prefix: str, announce: bool) -> None:
        if self.halted:
            self.report.not_sent.extend(change.key for change in step.changes)
            return
        if announce:
            self.inputs.announce(f"rollout: {prefix}{step.label}: {len(step.changes)} device(s)")
        inputs = self.inputs
        executor = Executor(
            step.changes, self.state, self.publisher, self.commit, inputs.options, inputs.progress
        )
        executor.limiter = self.limiter  # one pace across steps
        executor.on_result = self._observer(executor)
        self.current = executor
        try:
            await executor.run()
        except asyncio.CancelledError:  # second Ctrl-C: in-flight requests were abandoned
            executor.report.interrupted = True
        finally:
            self.current = None
            executor.merge_into(self.state)
            self._merge(executor.report)
        if step.canary and not self.halted:
            self._check_canary(step)

    def _observer(self, executor: Executor) -> Callable[[Change, ApiResult], None]:
        def observe(change: Change, result: ApiResult) -> None:
            reason = self.guard.observe(change, result.ok)
            if reason is not None:
                self.reason = reason
                executor.stop()

        return observe

    def _check_canary(self, step: Step) -> None:
        failed = [change.key for change in step.changes if change.key in self.report.failed]
        if failed:
            self.reason = f"canary: {len(failed)} of {len(step.changes)} canary devices failed"

    def _merge(self, part: ApplyReport) -> None:
        report = self.report
        report.applied.extend(part.applied)
        report.failed.update(part.failed)
        report.not_sent.extend(part.not_sent)
        report.unknown.extend(part.unknown)
        report.requests += part.requests
        if report.fatal is None and part.fatal is not None:
            report.fatal, report.endpoint_broken = part.fatal, part.endpoint_broken
        report.interrupted = report.interrupted or part.interrupted


# --------------------------------------------------------------------------- entry point


def apply_rollout(
    plan: Plan,
    state: State,
    make_publisher: PublisherFactory,
    options: ApplyOptions,
    flags: RolloutSpec | None = None,
    progress: ProgressSink | None = None,
    skip: Iterable[str] = (),
    announce: Announce = lambda line: None,
    recorder: Recorder | None = None,
) -> ApplyReport:
    """Send the plan's create/update/retry changes in rollout order; record every outcome.

    The caller saves the state afterwards (this function journals as it goes).
    """
    skipped = set(skip)
    to_send = sendable_now(plan, skipped)  # deferred changes wait for their window
    sink = progress or NoProgress()
    inputs = RolloutInputs(
        to_send,
        plan.policies,
        flags or RolloutSpec(),
        state,
        options,
        _OneBar(sink, len(to_send)),
        announce,
    )
    journal = recorder or JsonFileStore(state.location).recorder(state)
    started = time.monotonic()
    try:
        report = asyncio.run(_run(inputs, make_publisher, journal))
    finally:
        journal.close()
    sink.finished()
    report.elapsed = time.monotonic() - started
    report.deferred = deferred_keys(plan)
    return report


async def _run(
    inputs: RolloutInputs, make_publisher: PublisherFactory, journal: Recorder
) -> ApplyReport:
    async with make_publisher() as publisher:
        rollout = Rollout(inputs, publisher, GroupCommit(journal))
        task = asyncio.ensure_future(rollout.run())
        with InterruptHandlers(rollout, task):
            try:
                return await task
            except asyncio.CancelledError:
                rollout.report.interrupted = True
                return rollout.report
