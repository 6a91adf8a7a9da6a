"""The executor: publish a plan's changes concurrently, rate-limited and retried, journaling
every result before it counts, then rewrite the state once.

Guarantees (see docs/reliability.md): never two requests in flight to one device (each key is
one task); a `pending` record is in the journal (handed to the OS, no fsync wait) before its
request leaves; a reply the cloud acknowledged is fsync'd to the journal before the device is
counted as done.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rrpcsync import secrets
from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import ApiResult
from rrpcsync.manifests.expect import REPLY_MISMATCH, check_reply
from rrpcsync.model import Change, DeviceRecord, ErrorInfo, Plan, Status
from rrpcsync.run.pacing import AdaptiveRateLimiter, RateLimiter
from rrpcsync.state import JsonFileStore, Recorder, State, utc_now


class Publisher(Protocol):
    async def publish(
        self, product_id: str, device_name: str, payload: str, request_id: str | None = None
    ) -> ApiResult: ...


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    parallelism: int = 10
    rate: float = 20.0  # with adaptive_rate, where it starts
    adaptive_rate: bool = False  # --rate auto (run/pacing.py)
    max_rate: float = 200.0  # the ceiling of --rate auto
    retries: int = 3
    backoff: float = 0.5  # first retry waits up to this long (full jitter, doubling)
    backoff_max: float = 30.0


@dataclass(slots=True)
class ApplyReport:
    total: int = 0
    applied: list[str] = field(default_factory=list)
    failed: dict[str, ErrorInfo] = field(default_factory=dict)
    not_sent: list[str] = field(default_factory=list)  # stopped before dispatch (fatal/interrupt)
    unknown: list[str] = field(default_factory=list)  # in flight when aborted: left pending
    stale: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    requests: int = 0
    fatal: ApiResult | None = None
    interrupted: bool = False
    elapsed: float = 0.0
    blocked: list[str] = field(default_factory=list)  # not sent: a dependency had failures
    aborted: str | None = None  # why a rollout stopped early (rollout.py)
    endpoint_broken: bool = False  # `fatal` is the connection failure that stopped the run
    deferred: list[str] = field(default_factory=list)  # not sent: outside maintenance windows
    claimed: dict[str, str] = field(default_factory=dict)  # not sent: another run has it

    @property
    def failures_by_code(self) -> Counter[str]:
        return Counter(error.code for error in self.failed.values())

    @property
    def effective_rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


class ProgressSink(Protocol):
    def started(self, total: int) -> None: ...
    def result(self, key: str, ok: bool, code: str | None) -> None: ...
    def finished(self) -> None: ...


class NoProgress:
    def started(self, total: int) -> None:
        pass

    def result(self, key: str, ok: bool, code: str | None) -> None:
        pass

    def finished(self) -> None:
        pass


# --------------------------------------------------------------------------- records


def pending_record(previous: DeviceRecord | None, change: Change, request_id: str) -> DeviceRecord:
    base = previous or DeviceRecord(status=Status.PENDING)
    return base._replace(
        status=Status.PENDING,
        target_sha256=change.payload_sha256_after,
        request_id=request_id,
        manifest=change.manifest,
    )


def applied_record(change: Change, result: ApiResult, attempts: int) -> DeviceRecord:
    reply_base64, reply_text = _stored_reply(change, result)
    return DeviceRecord(
        status=Status.APPLIED,
        payload_sha256=change.payload_sha256_after,
        payload=change.shown_payload,  # secrets live only inside the hash
        target_sha256=change.payload_sha256_after,
        request_id=result.request_id,
        message_id=result.message_id,
        reply_base64=reply_base64,
        reply_text=reply_text,
        applied_at=utc_now(),
        attempts=attempts,
        last_error=None,
        manifest=change.manifest,
    )


def _stored_reply(change: Change, result: ApiResult) -> tuple[str | None, str | None]:
    """The reply as stored: a device that echoes a sensitive payload must not leak it, in any
    encoding (raw, JSON-escaped, base64: `secrets.redact`)."""
    text = result.reply_text
    if change.payload_template is None or result.reply_base64 is None:
        return result.reply_base64, text
    if text is None:
        return None, None  # undecodable bytes may hold the secret: keep neither form
    masked = secrets.redact(text, mask=secrets.MASK)
    if masked != text:
        return base64.b64encode(masked.encode("utf-8", "surrogatepass")).decode("ascii"), masked
    return result.reply_base64, text


def checked_reply(change: Change, result: ApiResult) -> ApiResult:
    """A reply that fails the manifest's `expect` check is a device error: ReplyMismatch."""
    assert change.expect is not None and change.payload is not None
    reason = check_reply(change.expect, change.payload, result.reply_text, result.reply_base64)
    if reason is None:
        return result
    reason = secrets.redact(reason, mask=secrets.MASK)  # the reply may echo a secret
    return dataclasses.replace(
        result, ok=False, code=REPLY_MISMATCH, message=reason, error_class=ErrorClass.DEVICE
    )


def failed_record(
    previous: DeviceRecord | None, change: Change, result: ApiResult, attempts: int
) -> DeviceRecord:
    """Keeps what the device last acknowledged; a failed update never erases it."""
    base = previous or DeviceRecord(status=Status.FAILED)
    if result.code == REPLY_MISMATCH:  # the device did answer: its reply is the evidence
        reply_base64, reply_text = _stored_reply(change, result)
        base = base._replace(
            message_id=result.message_id, reply_base64=reply_base64, reply_text=reply_text
        )
    error = ErrorInfo(result.code or "Unknown", result.message or "", utc_now())
    return base._replace(
        status=Status.FAILED,
        target_sha256=change.payload_sha256_after,
        request_id=result.request_id,
        attempts=attempts,
        last_error=error,
        manifest=change.manifest,
    )


def never_reached(result: ApiResult) -> bool:
    """The request never reached the cloud: connection refused, DNS, TLS, proxy (aiohttp maps
    them all to a connect error), or TLS verification (Transport.CertificateError)."""
    return result.code in UNREACHED_CODES


UNREACHED_CODES = frozenset({"Transport.ConnectError", "Transport.CertificateError"})


def broken_after(options: ApplyOptions, devices: int) -> int:
    """Consecutive unreached requests, with no answer between, that mean a broken endpoint.

    One full round of the workers in flight (`--parallelism`, or fewer devices), and at least
    3, so one bad connection does not stop a run; the run stops within about two rounds.
    """
    return max(3, min(options.parallelism, devices))


def keeps_previous(result: ApiResult, reached: bool) -> bool:
    """Results about the run, not the device: the device keeps its previous record.

    A fatal answer (the token or the account was refused), or a device none of whose requests
    reached the cloud.
    """
    if result.ok:
        return False
    return result.error_class is ErrorClass.FATAL or not reached


# --------------------------------------------------------------------------- pacing


def limiter_for(options: ApplyOptions) -> RateLimiter:
    """`--rate R` paces at R; `--rate auto` adapts between 1/s and `--max-rate`."""
    if options.adaptive_rate:
        return AdaptiveRateLimiter(options.max_rate, start=min(options.rate, options.max_rate))
    return RateLimiter(options.rate)


def backoff_delay(attempt: int, result: ApiResult, options: ApplyOptions) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    ceiling = min(options.backoff_max, options.backoff * (2 ** (attempt - 1)))
    delay = random.uniform(0, ceiling)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, options.backoff_max))
    return delay


MAX_RESENDS = 3  # a request whose token was refused is sent again at most this often


def resend_class(result: ApiResult, resends: int) -> ApiResult:
    """A RESEND answer past `MAX_RESENDS` is fatal: fresh tokens keep being refused."""
    if result.error_class is ErrorClass.RESEND and resends >= MAX_RESENDS:
        return dataclasses.replace(result, error_class=ErrorClass.FATAL)
    return result


def should_retry(result: ApiResult, attempts: int, options: ApplyOptions, stopping: bool) -> bool:
    """Only transient errors are retried, up to `retries` times, and not once stopping."""
    if result.ok or result.error_class is not ErrorClass.TRANSIENT:
        return False
    return attempts <= options.retries and not stopping


async def wait_before_retry(
    attempts: int, result: ApiResult, options: ApplyOptions, limiter: RateLimiter
) -> None:
    delay = backoff_delay(attempts, result, options)
    if result.code and result.code.startswith("RequestLimitExceeded"):
        limiter.pause(delay)  # the cloud's quota is shared: everyone slows down
    await asyncio.sleep(delay)


# --------------------------------------------------------------------------- journaling


class GroupCommit:
    """Batches journal writes from concurrent workers into one write + fsync per batch."""

    def __init__(self, journal: Recorder) -> None:
        self.journal = journal
        self.batch: list[tuple[str, DeviceRecord]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.flushing: asyncio.Task[None] | None = None

    def write_through(self, key: str, record: DeviceRecord) -> None:
        """Hand a record to the OS at once, without waiting for an fsync.

        Used for `pending` records: they must be in the journal before the request leaves, so
        a killed run knows the outcome is unknown; a power cut that loses one changes nothing,
        since a device without a record is re-sent just like a pending one.
        """
        self.journal.append_many([(key, record)], sync=False)

    async def write(self, key: str, record: DeviceRecord) -> None:
        """Returns once the record is on disk (fsync'd, batched with concurrent writers)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batch.append((key, record))
        self.waiters.append(future)
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.ensure_future(self._flush_loop())
            self.flushing.add_done_callback(_retrieve)  # its waiters got the exception
        await asyncio.shield(future)

    async def _flush_loop(self) -> None:
        """Each waiter gets its batch's outcome; a failed write (disk full) fails every waiter,
        those that queued meanwhile too. The loop itself never ends with an exception, which
        nobody would retrieve (asyncio would print "Task exception was never retrieved")."""
        while self.batch:
            batch, waiters = self.batch, self.waiters
            self.batch, self.waiters = [], []
            try:
                await asyncio.to_thread(self.journal.append_many, batch)
            except BaseException as exc:
                waiters += self.waiters
                self.batch, self.waiters = [], []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


# --------------------------------------------------------------------------- executor


class Executor:
    def __init__(
        self,
        changes: Sequence[Change],
        state: State,
        publisher: Publisher,
        commit: GroupCommit,
        options: ApplyOptions,
        progress: ProgressSink,
    ) -> None:
        self.changes = changes
        self.state = state
        self.publisher = publisher
        self.commit = commit
        self.options = options
        self.progress = progress
        self.limiter = limiter_for(options)
        self.report = ApplyReport(total=len(changes))
        self.stopping = False  # no new dispatch (fatal error or first interrupt)
        self.results: dict[str, DeviceRecord] = {}
        self.forgotten: set[str] = set()  # no record before, none after: never reached
        self.in_flight = 0
        self.unreached_streak = 0  # consecutive requests that never reached the cloud
        self.broken_after = broken_after(options, len(changes))
        self.recording: set[asyncio.Future[None]] = set()
        self.recording_error: BaseException | None = None
        # sees each final outcome at once (before it is durable): rollout abort criteria
        self.on_result: Callable[[Change, ApiResult], None] | None = None

    async def run(self) -> ApplyReport:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        for change in self.changes:
            queue.put_nowait(change)
        workers = [
            asyncio.ensure_future(self._worker(queue))
            for _ in range(min(self.options.parallelism, len(self.changes)))
        ]
        self.progress.started(len(self.changes))
        try:
            await asyncio.gather(*workers)
        except BaseException:  # cancelled, or a worker failed (the state store went away)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            self._account_unsent(queue)
            await self._drain_recording()  # replies already received are never dropped
        # every task's exception is retrieved: the first one (a journal that cannot be
        # written: disk full) ends the run, and asyncio prints no "never retrieved" traceback
        if self.recording_error is not None:
            raise self.recording_error
        return self.report

    async def _drain_recording(self) -> None:
        while self.recording:
            await asyncio.gather(*self.recording, return_exceptions=True)

    def _track(self, task: asyncio.Future[None]) -> None:
        self.recording.add(task)
        task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Future[None]) -> None:
        self.recording.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.recording_error is None:
            self.recording_error = error
            self.stop()  # the journal failed: send nothing more

    def stop(self) -> None:
        self.stopping = True

    def merge_into(self, state: State) -> None:
        """The outcomes into the in-memory state (the recorder already holds them)."""
        state.devices.update(self.results)
        for key in self.forgotten:
            state.devices.pop(key, None)

    def _account_unsent(self, queue: asyncio.Queue[Change]) -> None:
        while not queue.empty():
            self.report.not_sent.append(queue.get_nowait().key)

    async def _worker(self, queue: asyncio.Queue[Change]) -> None:
        while not self.stopping and not queue.empty():
            change = queue.get_nowait()
            try:
                await self._send(change)
            except asyncio.CancelledError:
                self.report.unknown.append(change.key)
                raise
            except Exception:
                self.stop()  # e.g. the journal cannot be written: the other workers stop too
                raise

    async def _send(self, change: Change) -> None:
        key = change.key
        previous = self.state.devices.get(key)
        product_id, _, device_name = key.partition("/")
        attempts = resends = 0
        reached = False  # some request of this device got an answer (or may have)
        while True:
            attempts += 1
            request_id = str(uuid.uuid4())
            sent_at = await self.limiter.acquire()
            if self.stopping and attempts > 1:
                attempts -= 1  # stopped while waiting for a slot: the last answer stands
                break
            if self.stopping:
                self._never_sent(key, previous)  # stopped while waiting: never sent
                return
            pending = pending_record(previous, change, request_id)
            self.commit.write_through(key, pending)
            self.results[key] = pending  # outcome unknown until the reply is journaled
            assert change.payload is not None
            self.report.requests += 1
            self.in_flight += 1
            try:
                result = resend_class(
                    await self.publisher.publish(
                        product_id, device_name, change.payload, request_id
                    ),
                    resends,
                )
            finally:
                self.in_flight -= 1
            if result.error_class is ErrorClass.RESEND:
                # The token was refused (the device never saw the request) and a new one is
                # ready: send again; not an attempt (docs/auth.md).
                attempts -= 1
                resends += 1
                continue
            reached = reached or not never_reached(result)
            self._watch_endpoint(result)
            self.limiter.observe(result, sent_at)
            if not should_retry(result, attempts, self.options, self.stopping):
                break
            await wait_before_retry(attempts, result, self.options, self.limiter)
            if self.stopping:
                break
        if result.ok and change.expect is not None:
            result = checked_reply(change, result)
        self._record(change, previous, result, attempts, reached)

    def _watch_endpoint(self, result: ApiResult) -> None:
        """Stop the run once `broken_after` requests in a row never reached the cloud."""
        if not never_reached(result):
            self.unreached_streak = 0
            return
        self.unreached_streak += 1
        if self.unreached_streak >= self.broken_after and self.report.fatal is None:
            self.report.fatal = result
            self.report.endpoint_broken = True
            self.stop()

    def _never_sent(self, key: str, previous: DeviceRecord | None) -> None:
        """Stopped before a request reached the device: its previous record stands."""
        self.report.not_sent.append(key)
        if key in self.results and previous is not None:  # a refused request left `pending`
            self.commit.write_through(key, previous)
            self.results[key] = previous

    def _record(
        self,
        change: Change,
        previous: DeviceRecord | None,
        result: ApiResult,
        attempts: int,
        reached: bool = True,
    ) -> None:
        """Journal the outcome; the worker moves on while the fsync (batched) completes."""
        if result.error_class is ErrorClass.FATAL and self.report.fatal is None:
            self.report.fatal = result
            self.stop()
        if keeps_previous(result, reached):
            self._keep_previous(change.key, previous, result)
            return
        if result.ok:
            record = applied_record(change, result, attempts)
        else:
            record = failed_record(previous, change, result, attempts)
        if self.on_result is not None:
            self.on_result(change, result)
        task = asyncio.ensure_future(self._count_when_durable(change.key, record, result))
        self._track(task)

    def _keep_previous(self, key: str, previous: DeviceRecord | None, result: ApiResult) -> None:
        """Not the device's outcome: its record goes back to what it was before the run."""
        self.report.not_sent.append(key)
        if previous is None:
            self.results.pop(key, None)
            self.forgotten.add(key)
            self.progress.result(key, False, result.code)
            return
        self.results[key] = previous
        task = asyncio.ensure_future(self._restore_when_durable(key, previous, result))
        self._track(task)

    async def _restore_when_durable(
        self, key: str, previous: DeviceRecord, result: ApiResult
    ) -> None:
        await self.commit.write(key, previous)  # a later replay must not see it pending
        self.progress.result(key, False, result.code)

    async def _count_when_durable(self, key: str, record: DeviceRecord, result: ApiResult) -> None:
        await self.commit.write(key, record)  # on disk before the device counts as done
        self.results[key] = record
        if record.last_error is None:
            self.report.applied.append(key)
        else:
            self.report.failed[key] = record.last_error
        self.progress.result(key, result.ok, result.code)


# --------------------------------------------------------------------------- entry point


def stale_changes(plan: Plan, state: State) -> list[str]:
    """Changes of a saved plan whose base no longer matches the state (another run moved on)."""
    stale = []
    for change in plan.changes:
        record = state.devices.get(change.key)
        if (record.payload_sha256 if record else None) != change.payload_sha256_before:
            stale.append(change.key)
    return stale


PublisherFactory = Callable[[], "AsyncPublisherContext"]


class AsyncPublisherContext(Protocol):
    async def __aenter__(self) -> Publisher: ...
    async def __aexit__(self, *exc: object) -> None: ...


def apply_changes(
    plan: Plan,
    state: State,
    make_publisher: PublisherFactory,
    options: ApplyOptions,
    progress: ProgressSink | None = None,
    skip: Iterable[str] = (),
    recorder: Recorder | None = None,
) -> ApplyReport:
    """Send the plan's create/update/retry changes and record every outcome in `state`.

    The caller saves the state afterwards (this function records results as they come, in
    `recorder`; by default the journal of the JSON file at `state.location`).
    """
    skipped = set(skip)
    to_send = sendable_now(plan, skipped)
    journal = recorder or JsonFileStore(state.location).recorder(state)
    started = time.monotonic()
    try:
        report = asyncio.run(_run(to_send, state, make_publisher, journal, options, progress))
    finally:
        journal.close()
    report.elapsed = time.monotonic() - started
    report.deferred = deferred_keys(plan)
    return report


def sendable_now(plan: Plan, skipped: set[str]) -> list[Change]:
    """The changes to send now: not skipped, not waiting for a maintenance window."""
    return [c for c in plan.changes if c.action.sends and not c.deferred and c.key not in skipped]


def deferred_keys(plan: Plan) -> list[str]:
    return [change.key for change in plan.changes if change.deferred]


async def _run(
    changes: Sequence[Change],
    state: State,
    make_publisher: PublisherFactory,
    journal: Recorder,
    options: ApplyOptions,
    progress: ProgressSink | None,
) -> ApplyReport:
    sink = progress or NoProgress()
    async with make_publisher() as publisher:
        executor = Executor(changes, state, publisher, GroupCommit(journal), options, sink)
        task = asyncio.ensure_future(executor.run())
        with InterruptHandlers(executor, task):
            try:
                report = await task
            except asyncio.CancelledError:
                report = executor.report
                report.interrupted = True
        executor.merge_into(state)
    sink.finished()
    return report


class Stoppable(Protocol):
    """What signal handling needs: an Executor, or a rollout running several in turn."""

    report: ApplyReport

    @property
    def in_flight(self) -> int: ...

    def stop(self) -> None: ...


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class InterruptHandlers:
    """First SIGINT/SIGTERM: stop dispatching, let in-flight finish. Second: cancel in-flight."""

    def __init__(
        self,
        executor: Stoppable,
        task: asyncio.Future[ApplyReport],
        say: Callable[[str], None] = _to_stderr,
    ) -> None:
        self.executor = executor
        self.task = task
        self.say = say
        self.count = 0
        self.installed: list[tuple[signal.Signals, object]] = []

    def __enter__(self) -> InterruptHandlers:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                before = signal.getsignal(signum)
                loop.add_signal_handler(signum, self._handle)
                self.installed.append((signum, before))
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests) or not supported
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for signum, before in self.installed:
            loop.remove_signal_handler(signum)
            if callable(before) or before in (signal.SIG_DFL, signal.SIG_IGN):
                signal.signal(signum, before)  # type: ignore[arg-type]  # the caller's again

    def _handle(self) -> None:
        self.count += 1
        self.executor.report.interrupted = True
        self.executor.stop()
        if self.count > 1:
            self.say("interrupted again: abandoning the requests in flight")
            self.task.cancel()
            return
        waiting = self.executor.in_flight
        noun = "request" if waiting == 1 else "requests"
        self.say(
            f"interrupted: waiting for {waiting} in-flight {noun} (Ctrl-C again to abandon them)"
        )
