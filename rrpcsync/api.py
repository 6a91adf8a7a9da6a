"""The library API: validate, plan, apply and check drift without click.

The CLI is a thin layer over these functions; scripts can call them too (docs/library.md).
Every state write goes through the `StateStore` given; nothing here prints: progress notes go
to the `say` callback, the plan to `show`, and confirmation is asked of `confirm`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrpcsync import jsontext
from rrpcsync.cloud.tokens import LOGIN_CODE_PREFIX
from rrpcsync.errors import ConfigError, FatalApiError, ManifestError, PlanFileError, UsageError
from rrpcsync.manifests import loader
from rrpcsync.manifests.loader import LoadResult
from rrpcsync.manifests.policy import declared_policies
from rrpcsync.model import (
    Action,
    Change,
    DesiredDevice,
    DeviceRecord,
    Plan,
    RolloutSpec,
    Status,
    Summary,
)
from rrpcsync.planning.selection import RecordFilter, Selection, failed_keys, unmatched

if TYPE_CHECKING:
    from rrpcsync.cloud.client import RrpcClient
    from rrpcsync.cloud.tokens import TokenSource
    from rrpcsync.manifests.explain import Explanation
    from rrpcsync.report.model import GroupBy, Report
    from rrpcsync.run.executor import ApplyOptions, ApplyReport, ProgressSink
    from rrpcsync.state import RunRecord, State, StateStore

# The state stores and the planner are imported by the functions that use them, so that
# `rrpcsync validate` loads neither (docs/performance.md, start-up).

__all__ = [
    "NEW_STATE",
    "Applied",
    "Connection",
    "DriftCheck",
    "LoggedIn",
    "Planned",
    "SendLimit",
    "Windows",
    "apply_manifests",
    "check_drift",
    "explain_device",
    "fatal_message",
    "fleet_report",
    "load_saved_plan",
    "log_in",
    "migrate_state",
    "open_store",
    "plan_manifests",
    "pull_state",
    "push_state",
    "validate_manifests",
]

DEFAULT_PATHS = ("configs/",)
NEW_STATE = ""  # the lineage of a plan made when the state did not exist yet
Say = Callable[[str], None]
ProgressFactory = Callable[[], "ProgressSink"]


def _quiet(_line: str) -> None:
    """The default `say`: library callers see nothing unless they ask."""


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the cloud: endpoint, token source, per-request timeout."""

    endpoint: str | None = None  # None: the site's RRPC endpoint
    access_token_file: str | None = None  # a static token (docs/auth.md: precedence)
    allow_insecure_endpoint: bool = False
    timeout: float = 15.0
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    credentials_file: str | None = None  # KEY=value lines: log in with AppGetToken
    site: str | None = None  # china (None) or overseas: both endpoints
    login_endpoint: str | None = None  # None: the site's, or the endpoint's sibling
    tokens: TokenSource | None = None  # a source of your own; None: from the credentials
    # The token source once resolved: probes and the apply that follows share one login.
    resolved: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def token_source(self, say: Say) -> tuple[TokenSource, str]:
        """The token source and the RRPC endpoint, resolved once (warnings go to `say`)."""
        if "source" not in self.resolved:
            self.resolved["source"] = self._resolve(say)
        source, endpoint = self.resolved["source"]
        return source, endpoint

    def _resolve(self, say: Say) -> tuple[TokenSource, str]:
        from rrpcsync.cloud import login

        endpoints, warnings = login.resolve_endpoints(
            self.site,
            self.endpoint,
            self.login_endpoint,
            allow_insecure=self.allow_insecure_endpoint,
        )
        for warning in warnings:
            say(f"warning: {warning}")
        if self.tokens is not None:
            return self.tokens, endpoints.rrpc
        auth = login.resolve_auth(self.env, self.credentials_file, self.access_token_file)
        login.describe(auth, endpoints, say)
        return login.token_source(auth, endpoints.login, timeout=self.timeout), endpoints.rrpc


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """--refresh (probe devices) and --resync-after (re-send stale ones), docs/drift.md."""

    refresh: bool = False
    resync_after: float | None = None

    @property
    def active(self) -> bool:
        return self.refresh or self.resync_after is not None


@dataclass(frozen=True, slots=True)
class Windows:
    """Maintenance windows (`spec.windows`): `ignore` sends now anyway (--ignore-windows);
    `now` is the moment they are checked against (default: the current time)."""

    ignore: bool = False
    now: datetime | None = None

    def apply(self, plan: Plan) -> Plan:
        from rrpcsync.planning.deferral import defer_outside_windows, send_now

        if self.ignore:
            return send_now(plan)
        return defer_outside_windows(plan, self.now or datetime.now(timezone.utc))


@dataclass(slots=True)
class Planned:
    """A plan and the state it was made against."""

    state: State
    plan: Plan
    manifests: LoadResult | None = None  # what was loaded (None for a saved plan)


@dataclass(slots=True)
class Applied:
    """What an apply did; `report` is None when there was nothing to send or forget."""

    planned: Planned
    report: ApplyReport | None
    fatal: str | None = None  # why the run stopped (token refused, endpoint unreachable)


@dataclass(frozen=True, slots=True)
class SendLimit:
    """`--max-sends N` or `--max-sends P%` (of the selected devices): the blast-radius guard."""

    value: float
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> SendLimit:
        """`50` or `10%`; ValueError with the reason otherwise."""
        raw = text.strip()
        percent = raw.endswith("%")
        number = raw[:-1].strip() if percent else raw
        try:
            value = float(number) if percent else int(number)
        except ValueError:
            raise ValueError(f"{text!r} is not a count (50) or a percentage (10%)") from None
        if not math.isfinite(value) or value < 0 or (percent and value > 100):
            raise ValueError(f"{text!r} is out of range (a count >= 0, or 0% to 100%)")
        return cls(float(value), percent)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"

    def allowed(self, selected: int) -> int:
        """How many sends the limit allows for `selected` devices."""
        return math.floor(self.value * selected / 100 + 1e-9) if self.percent else int(self.value)


# --------------------------------------------------------------------------- validate / plan


def open_store(spec: str, name: str = "default") -> StateStore:
    """The store named by a `--state` value and `--state-name` (`rrpcsync.state.open_store`)."""
    from rrpcsync import state

    return state.open_store(spec, name)


def validate_manifests(paths: Sequence[str] = ()) -> LoadResult:
    """Load and check manifests; any problem raises ManifestError carrying every diagnostic.
    Secret values are not needed: an unset `${env:NAME}` is a problem for plan and apply."""
    result = loader.load_manifests(paths or DEFAULT_PATHS)
    result.diagnostics = [d for d in result.diagnostics if not loader.is_missing_secret(d)]
    if not result.ok:
        raise ManifestError(result.diagnostics, loader.summary_line(result))
    return result


def plan_manifests(
    paths: Sequence[str],
    store: StateStore,
    *,
    selection: Selection | None = None,
    prune: bool = False,
    drift: DriftCheck | None = None,
    connection: Connection | None = None,
    sending: ApplyOptions | None = None,
    progress: ProgressFactory | None = None,
    say: Say = _quiet,
    record_observations: bool = False,
    only_failed: bool = False,
    windows: Windows | None = None,
    read_only: bool = False,
) -> Planned:
    """Diff the manifests against the store (the state loads while workers parse the manifests).

    With `drift`, devices are first probed (`connection`/`sending` say how) and `drift` changes
    planned; `record_observations` (apply) keeps what they reported in the loaded state.
    Changes of manifests outside their maintenance windows are deferred (`windows`).
    `read_only` (`plan`: nothing will be written) lets a SQL store read every device's summary
    and then the full records of only the devices the plan changes (docs/state.md).
    """
    from rrpcsync.planning.planner import make_plan
    from rrpcsync.state.store import SummaryLoading

    selection = selection or Selection()
    _refuse_saved_plan(paths, "plan")
    probing = drift is not None and drift.active
    summary = read_only and isinstance(store, SummaryLoading) and not probing
    load = store.load_summary if isinstance(store, SummaryLoading) and summary else store.load
    desired, state = loader.load_manifests_while(paths or DEFAULT_PATHS, load)
    if not desired.ok:
        raise ManifestError(desired.diagnostics, loader.summary_line(desired))
    problems = unmatched(selection, desired.devices, state.devices)
    if problems:
        raise UsageError("; ".join(problems))
    new_state = not state.exists and not state.devices
    if new_state:
        say(f"no state at {state.location}: all {len(desired.devices)} declared devices are new")
    if only_failed:  # the state's failed devices, read under the same load
        selection = selection.only(failed_keys(state.devices))

    def diff(state: State) -> Plan:
        return make_plan(
            desired.devices,
            state.devices,
            lineage=state.lineage if state.exists else NEW_STATE,
            serial=state.serial,
            prune=prune,
            selection=selection,
            policies=declared_policies(desired.manifests),
        )

    plan = diff(state)
    if summary and isinstance(store, SummaryLoading):
        changed = {c.key: state.devices[c.key] for c in plan.changes if c.key in state.devices}
        full = store.full_records(changed)
        if full is None:  # another run wrote some of them since: plan from the full state
            state = store.load()
            plan = diff(state)
        else:
            state.devices.update(full)
            plan = _with_full_records(plan, full)
    if new_state:
        plan = dataclasses.replace(plan, new_state=state.location)
    if drift is not None and drift.active:
        plan = _add_drift(
            desired.devices,
            state,
            plan,
            selection,
            drift,
            _Sender(connection or Connection(), sending, progress, say),
            record_observations,
        )
    return Planned(state, (windows or Windows()).apply(plan), manifests=desired)


def _with_full_records(plan: Plan, full: Mapping[str, DeviceRecord]) -> Plan:
    """A plan made from summaries, completed from the full records of the devices it changes:
    what they last acknowledged (`payload_before`) and, if sent, their last request id."""
    from rrpcsync.planning.planner import orphan_change

    def completed(change: Change) -> Change:
        record = full.get(change.key)
        if record is None:
            return change
        if change.action is Action.ORPHAN:
            return orphan_change(change.key, record)
        return replace(
            change, payload_before=record.payload, base_request_id=record.request_id or ""
        )

    return replace(plan, changes=tuple(completed(change) for change in plan.changes))


def check_drift(
    paths: Sequence[str],
    store: StateStore,
    *,
    selection: Selection | None = None,
    resync_after: float | None = None,
    connection: Connection | None = None,
    sending: ApplyOptions | None = None,
    progress: ProgressFactory | None = None,
    say: Say = _quiet,
    windows: Windows | None = None,
) -> Planned:
    """`rrpcsync drift`: probe and plan, writing nothing (`plan --refresh`)."""
    return plan_manifests(
        paths,
        store,
        selection=selection,
        drift=DriftCheck(refresh=True, resync_after=resync_after),
        connection=connection,
        sending=sending,
        progress=progress,
        say=say,
        windows=windows,
    )


@dataclass(slots=True)
class _Sender:
    """Everything needed to open clients to the cloud, shared by probes and apply."""

    connection: Connection
    sending: ApplyOptions | None
    progress: ProgressFactory | None
    say: Say

    def options(self) -> ApplyOptions:
        from rrpcsync.run.executor import ApplyOptions

        return self.sending or ApplyOptions()

    def sink(self) -> ProgressSink | None:
        return self.progress() if self.progress is not None else None

    @property
    def endpoint(self) -> str:
        """The RRPC endpoint, as resolved (once) with the token source."""
        return self.connection.token_source(self.say)[1]

    def publisher_factory(self) -> Callable[[], RrpcClient]:
        from rrpcsync.cloud.client import RrpcClient

        conn = self.connection
        tokens, endpoint = conn.token_source(self.say)
        parallelism = self.options().parallelism

        def make() -> RrpcClient:
            return RrpcClient(endpoint, tokens, timeout=conn.timeout, max_connections=parallelism)

        return make


def _add_drift(
    desired: Sequence[DesiredDevice],
    state: State,
    plan: Plan,
    selection: Selection,
    check: DriftCheck,
    sender: _Sender,
    record: bool,
) -> Plan:
    from rrpcsync.run import drift

    observations = _probe(desired, state, selection, sender) if check.refresh else {}
    if record:
        drift.record_observations(state, observations)
    return drift.drift_plan(
        plan,
        desired,
        state.devices,
        selection=selection,
        observations=observations,
        resync_after=check.resync_after,
    )


def _probe(
    desired: Sequence[DesiredDevice], state: State, selection: Selection, sender: _Sender
) -> dict[str, Any]:
    """Observations of the devices to probe (none to probe: no request, no token needed)."""
    from rrpcsync.run import drift

    targets = drift.probe_targets(desired, state.devices, selection)
    if not targets:
        return {}
    sender.say(f"Probing {len(targets)} device(s) for drift...")
    report = drift.probe_devices(
        targets, sender.publisher_factory(), sender.options(), sender.sink()
    )
    if report.fatal is not None:
        raise FatalApiError(fatal_message(report.fatal.code or "Unknown", report.fatal.message))
    sender.say(drift.probe_summary(report))
    return report.observations


def explain_device(planned: Planned, key: str) -> Explanation:
    """The payload layers of one device (`plan --explain KEY`), from the manifests planned."""
    from rrpcsync.manifests.explain import explain

    if planned.manifests is None:
        raise UsageError("--explain needs manifests, not a saved plan")
    return explain(planned.manifests, key)


# --------------------------------------------------------------------------- report


def fleet_report(
    paths: Sequence[str],
    store: StateStore,
    *,
    group_by: Sequence[GroupBy] | None = None,
    now: datetime | None = None,
) -> Report:
    """`rrpcsync report`: how the state compares with the manifests, and the run history
    (docs/report.md). Reads only. Devices that need a send while all their manifest's
    maintenance windows are closed at `now` (default: the current time) count as deferred."""
    from rrpcsync.planning.deferral import closed_manifests
    from rrpcsync.report.model import DEFAULT_GROUP_BY, build_report

    desired, state = loader.load_manifests_while(paths or DEFAULT_PATHS, store.load)
    if not desired.ok:
        raise ManifestError(desired.diagnostics, loader.summary_line(desired))
    policies = declared_policies(desired.manifests)
    return build_report(
        desired.devices,
        state,
        store.runs(),
        group_by=group_by or DEFAULT_GROUP_BY,
        deferred_manifests=closed_manifests(policies, now or datetime.now(timezone.utc)),
    )


# --------------------------------------------------------------------------- saved plans

STALE_SHOWN = 5  # stale keys named in the refusal


def is_saved_plan(paths: Sequence[str]) -> bool:
    """Manifests are YAML: a `.json` argument is a saved plan (`plan --out`), given alone."""
    return saved_plan_path(paths) is not None


def saved_plan_path(paths: Sequence[str]) -> str | None:
    """The saved plan among `paths`, if any; mixed with other paths it is a usage error.
    (`!GLOB` entries, the config file's `exclude`, are not paths.)"""
    paths = [path for path in paths if not path.startswith(loader.EXCLUDE_PREFIX)]
    plans = [path for path in paths if path.endswith(".json")]
    if not plans:
        return None
    if len(paths) > 1:
        raise UsageError(
            f"{plans[0]} is a saved plan: apply it alone (`rrpcsync apply {plans[0]}`), "
            "without manifest paths or other plans"
        )
    return plans[0]


def _refuse_saved_plan(paths: Sequence[str], command: str) -> None:
    plan_file = saved_plan_path(paths)
    if plan_file is not None:
        raise UsageError(f"{plan_file} is a saved plan: `{command}` reads manifests (YAML)")


def read_saved_plan(path: str) -> Any:
    """The JSON of a saved plan: a regular file of bounded size and nesting; anything else is
    a PlanFileError naming the file."""
    from rrpcsync.manifests.files import read_manifest_file

    try:
        data = read_manifest_file(path)
    except ManifestError as exc:
        raise PlanFileError(
            f"{path}: cannot read saved plan: {exc.diagnostics[0].message}"
        ) from None
    try:
        return jsontext.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PlanFileError(
            f"{path}: cannot read saved plan: not UTF-8 (byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"{path}:{exc.lineno}:{exc.colno}: cannot read saved plan: not valid JSON: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise PlanFileError(f"{path}: cannot read saved plan: {exc}") from None


def load_saved_plan(
    path: str, store: StateStore, say: Say = _quiet, windows: Windows | None = None
) -> Planned:
    """A saved plan checked against the store: a plan with any stale change is refused whole.

    A change is stale when a run changed its device since the plan was made (another request
    was sent, or the acknowledged payload moved), unless the device now holds exactly what the
    plan would send: such changes were already applied and are left out, so applying the same
    plan twice sends nothing the second time. Updates get the recorded payload as their
    `payload_before`, so the plan shows the same diff `plan` showed. Maintenance windows are
    checked now, not when the plan was made.
    """
    from rrpcsync.planning.document import plan_from_document

    state = store.load()
    saved = plan_from_document(read_saved_plan(path), path, os.environ)
    if saved.lineage not in (NEW_STATE, state.lineage):
        raise PlanFileError(
            f"{path}: the plan was made for state lineage {saved.lineage}, but "
            f"{state.location} has lineage {state.lineage}; make a new plan"
        )
    fresh, done, stale = _sort_saved(saved.changes, state.devices)
    if stale:
        raise PlanFileError(_stale_message(path, stale, len(saved.changes), state.location))
    if saved.lineage == NEW_STATE and state.exists and fresh:
        raise PlanFileError(
            f"{path}: the plan was made before {state.location} existed, and another run has "
            "written it since; make a new plan"
        )
    if done:
        say(f"{path}: {len(done)} change(s) were already applied by an earlier run; skipped")
    if not state.exists and not state.devices:
        say(f"no state at {state.location}: the saved plan's devices are all new")
    changes = tuple(_with_base(change, state.devices.get(change.key)) for change in fresh)
    plan = dataclasses.replace(
        saved,
        changes=changes,
        summary=_summary_of(changes, saved.summary.noop + len(done)),
        new_state=None if state.exists else state.location,
    )
    return Planned(state, (windows or Windows()).apply(plan))


def _sort_saved(
    changes: Sequence[Change], records: Mapping[str, DeviceRecord]
) -> tuple[list[Change], list[str], list[str]]:
    """The saved plan's changes: still to do, already done, stale."""
    fresh: list[Change] = []
    done: list[str] = []
    stale: list[str] = []
    for change in changes:
        record = records.get(change.key)
        verdict = _saved_change_verdict(change, record)
        if verdict == "fresh":
            fresh.append(change)
        elif verdict == "done":
            done.append(change.key)
        else:
            stale.append(change.key)
    return fresh, done, stale


def _saved_change_verdict(change: Change, record: DeviceRecord | None) -> str:
    if change.action is Action.ORPHAN:
        if record is None:
            return "done"  # already forgotten
        moved = record.payload_sha256 != change.payload_sha256_before
        return "stale" if moved else "fresh"
    acknowledged = record.payload_sha256 if record else None
    moved = acknowledged != change.payload_sha256_before
    if change.base_request_id is not None:  # plans that recorded it: any send since counts
        moved = moved or ((record.request_id or "") if record else "") != change.base_request_id
    if not moved:
        return "fresh"
    applied = record is not None and record.status is Status.APPLIED
    return "done" if applied and acknowledged == change.payload_sha256_after else "stale"


def _with_base(change: Change, record: DeviceRecord | None) -> Change:
    """The recorded (masked) payload as `payload_before`: the diff `plan` showed."""
    if record is None or change.payload_before is not None:
        return change
    return dataclasses.replace(change, payload_before=record.payload)


def _summary_of(changes: Sequence[Change], noop: int) -> Summary:
    counts = Counter(change.action for change in changes)
    return Summary(
        counts[Action.CREATE],
        counts[Action.UPDATE],
        counts[Action.RETRY],
        counts[Action.ORPHAN],
        noop,
        drift=counts[Action.DRIFT],
    )


def _stale_message(path: str, stale: Sequence[str], total: int, location: str) -> str:
    shown = ", ".join(stale[:STALE_SHOWN])
    more = f" and {len(stale) - STALE_SHOWN} more" if len(stale) > STALE_SHOWN else ""
    return (
        f"{path}: saved plan is stale: {len(stale)} of its {total} change(s) no longer match "
        f"{location} (a run changed those devices since the plan was made): {shown}{more}; "
        "nothing was sent; make a new plan"
    )


# --------------------------------------------------------------------------- apply


def apply_manifests(
    paths: Sequence[str],
    store: StateStore,
    *,
    selection: Selection | None = None,
    prune: bool = False,
    drift: DriftCheck | None = None,
    connection: Connection | None = None,
    sending: ApplyOptions | None = None,
    rollout: RolloutSpec | None = None,
    max_sends: SendLimit | None = None,
    lock_timeout: float = 0.0,
    show: Callable[[Plan], None] = lambda plan: None,
    confirm: Callable[[Plan], None] = lambda plan: None,
    progress: ProgressFactory | None = None,
    say: Say = _quiet,
    only_failed: bool = False,
    windows: Windows | None = None,
) -> Applied:
    """Plan (or load the one saved plan in `paths`), show, confirm, send, record, save.

    `confirm` raises to refuse. Holds the store's lock throughout. A saved plan is applied
    exactly as saved: selection, prune and drift options are refused with it (UsageError);
    the sending and rollout options apply to it as to any plan.
    Changes outside their manifest's maintenance windows are not sent (`deferred`), unless
    `windows.ignore`.
    """
    from rrpcsync.state import utc_now

    sender = _Sender(connection or Connection(), sending, progress, say)
    started = utc_now()
    plan_file = saved_plan_path(paths)
    if plan_file is not None:
        _refuse_narrowing(selection or Selection(), prune, drift, only_failed)
    with _writing(store, "apply", lock_timeout) as sharded:
        if plan_file is not None:
            planned = load_saved_plan(plan_file, store, say, windows)
        else:
            planned = plan_manifests(
                paths,
                store,
                selection=selection,
                prune=prune,
                drift=drift,
                connection=sender.connection,
                sending=sending,
                progress=progress,
                say=say,
                record_observations=True,
                only_failed=only_failed,
                windows=windows,
            )
        the_plan, state = planned.plan, planned.state
        # no token, an unsafe endpoint: an error before the plan is shown, not after
        make_publisher = sender.publisher_factory() if the_plan.summary.to_send else None
        show(the_plan)
        if not the_plan.actionable:
            if state.replayed or the_plan.summary.probed > the_plan.summary.unreachable:
                store.save(state)  # fold a killed run's journal in; keep what probes saw
            return Applied(planned, None)
        if max_sends is not None:
            check_send_limit(the_plan, max_sends)
        confirm(the_plan)
        claimed = _claim(sharded, store, planned, say)
        report = _execute(planned, store, sender, rollout or RolloutSpec(), make_publisher, claimed)
        store.save(state)
        store.record_run(_run_record("apply", started, report, state))
    fatal = run_failure(report, sender.endpoint) if report.fatal is not None else None
    return Applied(planned, report, fatal)


def _refuse_narrowing(
    selection: Selection, prune: bool, drift: DriftCheck | None, only_failed: bool = False
) -> None:
    """A saved plan is applied exactly as saved: options that would change it are refused."""
    given = [
        option
        for option, used in (
            ("--target", bool(selection.targets)),
            ("--exclude", bool(selection.excludes)),
            ("--selector", bool(selection.selectors)),
            ("--only-failed", only_failed or selection.keys is not None),
            ("--prune", prune),
            ("--refresh", drift is not None and drift.refresh),
            ("--resync-after", drift is not None and drift.resync_after is not None),
        )
        if used
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} cannot be used with a saved plan: it is applied exactly as "
            "saved; pass them to `rrpcsync plan --out` and apply that plan"
        )


def selected_count(the_plan: Plan) -> int:
    """The devices a plan covers: the selection's, else every declared device."""
    if the_plan.selection is not None:
        return the_plan.selection.selected
    summary = the_plan.summary
    return summary.to_send + summary.noop + summary.unreachable


def check_send_limit(the_plan: Plan, limit: SendLimit) -> None:
    """`--max-sends`: refuse (UsageError, exit 1) before anything is sent when above it."""
    sends = the_plan.summary.to_send
    selected = selected_count(the_plan)
    allowed = limit.allowed(selected)
    if sends <= allowed:
        return
    of = f" ({allowed} of {selected} selected device(s))" if limit.percent else ""
    raise UsageError(
        f"the plan would send to {sends} device(s), above --max-sends {limit}{of}; nothing was "
        "sent. Check --state and the manifests, narrow the run with --target/--selector, or "
        "raise --max-sends"
    )


@contextlib.contextmanager
def _writing(store: StateStore, command: str, timeout: float) -> Iterator[Any]:
    """The store's lock; a store that shards (SQL) gives a run that claims devices instead,
    so that applies with disjoint selections run at once (docs/state.md)."""
    begin_run = getattr(store, "begin_run", None)
    if begin_run is None:
        with store.lock(command, timeout=timeout):
            yield None
        return
    with begin_run(command, timeout) as sharded:
        yield sharded


def _claim(sharded: Any, store: StateStore, planned: Planned, say: Say) -> dict[str, str]:
    """Claim what this run sends or forgets; returns the devices to skip, naming why: another
    run in flight holds them, or wrote them after this run loaded the state."""
    if sharded is None:
        return {}
    the_plan, state = planned.plan, planned.state
    keys = [c.key for c in the_plan.changes if c.action.sends or c.action is Action.ORPHAN]
    skipped = {key: f"claimed by {who}" for key, who in sharded.claim(keys).items()}
    mine = [key for key in keys if key not in skipped]
    stored = store.records(mine)  # type: ignore[attr-defined]
    for key in mine:
        if key not in state.changed and stored.get(key) != state.devices.get(key):
            skipped[key] = "written by another run after this plan was made; plan again"
    if skipped:
        say(f"skipping {len(skipped)} device(s) another run has (see the summary)")
    return skipped


def _execute(
    planned: Planned,
    store: StateStore,
    sender: _Sender,
    flags: RolloutSpec,
    make_publisher: Callable[[], RrpcClient] | None,
    claimed: Mapping[str, str] | None = None,
) -> ApplyReport:
    """Forget orphans (with prune), then send in rollout order; skip what others claimed."""
    from rrpcsync.run.executor import ApplyReport, deferred_keys
    from rrpcsync.run.rollout import apply_rollout

    the_plan, state = planned.plan, planned.state
    claimed = dict(claimed or {})
    if claimed:
        the_plan = _without(the_plan, claimed)
        make_publisher = make_publisher if the_plan.summary.to_send else None
    pruned = prune_orphans(the_plan, state)
    report = ApplyReport()
    if make_publisher is not None:
        report = apply_rollout(
            the_plan,
            state,
            make_publisher,
            sender.options(),
            flags,
            sender.sink(),
            (),
            sender.say,
            recorder=store.recorder(state),
        )
    report.pruned = pruned
    report.deferred = deferred_keys(the_plan)
    report.claimed = claimed
    return report


def _without(the_plan: Plan, keys: Mapping[str, str]) -> Plan:
    """The plan without the changes of these devices (the summary counts what is left)."""
    changes = tuple(c for c in the_plan.changes if c.key not in keys)
    counts = Counter(c.action for c in changes)
    summary = replace(
        the_plan.summary,
        create=counts[Action.CREATE],
        update=counts[Action.UPDATE],
        retry=counts[Action.RETRY],
        drift=counts[Action.DRIFT],
        orphan=counts[Action.ORPHAN],
    )
    return replace(the_plan, changes=changes, summary=summary)


def prune_orphans(the_plan: Plan, state: State) -> list[str]:
    if not the_plan.prune:
        return []
    orphans = [c.key for c in the_plan.changes if c.action is Action.ORPHAN]
    for key in orphans:
        state.drop(key)
    return orphans


def _run_record(command: str, started: str, report: ApplyReport, state: State) -> RunRecord:
    from collections import Counter

    from rrpcsync.state import RunRecord, utc_now

    counts = Counter(record.status.value for record in state.devices.values())
    return RunRecord(
        started_at=started,
        finished_at=utc_now(),
        command=command,
        ci_url=_ci_url(os.environ),
        commit=os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA"),
        sent=len(report.applied) + len(report.failed) + len(report.unknown),
        applied=len(report.applied),
        failed=len(report.failed),
        failed_by_code=dict(report.failures_by_code),
        counts=dict(sorted(counts.items())),
    )


def _ci_url(env: Mapping[str, str]) -> str | None:
    from rrpcsync.state.lock import ci_url

    return ci_url(env)


def matching_keys(devices: Mapping[str, DeviceRecord], patterns: Sequence[str]) -> list[str]:
    """The recorded keys matching any pattern (a key or a glob); UsageError naming the patterns
    that match nothing."""
    import fnmatch

    found: dict[str, None] = {}
    unmatched = []
    for pattern in patterns:
        if _is_glob(pattern):
            hits = [key for key in devices if fnmatch.fnmatchcase(key, pattern)]
        else:
            hits = [pattern] if pattern in devices else []
        if not hits:
            unmatched.append(pattern)
        found.update(dict.fromkeys(sorted(hits)))
    if unmatched:
        raise UsageError(f"no device in the state matches {', '.join(unmatched)}; nothing changed")
    return list(found)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def remove_devices(
    store: StateStore,
    patterns: Sequence[str],
    lock_timeout: float = 0.0,
    confirm: Callable[[Sequence[str]], None] = lambda keys: None,
) -> list[str]:
    """`state rm`: forget the devices matching the keys or globs (nothing is sent); every
    pattern must match. `confirm` sees the keys first and raises to refuse."""
    with store.lock("state rm", timeout=lock_timeout):
        state = store.load()
        keys = matching_keys(state.devices, patterns)
        confirm(keys)
        for key in keys:
            state.drop(key)
        store.save(state)
    return keys


def renamed_keys(devices: Mapping[str, DeviceRecord], old: str, new: str) -> dict[str, str]:
    """`state mv`: {old key: new key}. `PRODUCT/*` → `NEWPRODUCT/*` (one `*` each) renames
    every match, keeping the part the `*` matched."""
    if old.count("*") != new.count("*") or old.count("*") > 1 or "?" in old or "[" in old:
        raise UsageError(
            f"cannot rename {old} to {new}: give two keys, or two patterns with one `*` each "
            "(P1/* NEWP/*)"
        )
    if "*" not in old:
        if old not in devices:
            raise UsageError(f"{old} is not in the state; nothing changed")
        return {old: new}
    head, _, tail = old.partition("*")
    new_head, _, new_tail = new.partition("*")
    moves = {
        key: new_head + key[len(head) : len(key) - len(tail)] + new_tail
        for key in sorted(devices)
        if key.startswith(head) and key.endswith(tail) and len(key) >= len(head) + len(tail)
    }
    if not moves:
        raise UsageError(f"no device in the state matches {old}; nothing changed")
    return moves


def move_devices(
    store: StateStore, old: str, new: str, lock_timeout: float = 0.0
) -> dict[str, str]:
    """`state mv`: rename records (nothing is sent), so a renamed device plans as unchanged.
    Refused, changing nothing, if a new key is already recorded or is not `PRODUCT/NAME`."""
    with store.lock("state mv", timeout=lock_timeout):
        state = store.load()
        moves = renamed_keys(state.devices, old, new)
        _check_targets(state, moves)
        records = {key: state.devices[key] for key in moves}
        for key in moves:
            state.drop(key)
        for key, target in moves.items():
            state.put(target, records[key])
        store.save(state)
    return moves


def _check_targets(state: State, moves: Mapping[str, str]) -> None:
    taken = sorted(t for t in moves.values() if t in state.devices and t not in moves)
    if taken:
        raise UsageError(f"already in the state: {', '.join(taken[:5])}; nothing changed")
    bad = [t for t in moves.values() if t.count("/") != 1 or t.startswith("/") or t.endswith("/")]
    if bad:
        raise UsageError(f"not a ProductId/DeviceName key: {bad[0]}; nothing changed")


def list_records(
    store: StateStore, record_filter: RecordFilter, paths: Sequence[str] = ()
) -> tuple[State, list[tuple[str, DeviceRecord]]]:
    """`state list`: the records that pass the filter, sorted; a label selector reads the
    devices' labels from the manifests in `paths`."""
    state = store.load()
    by_labels = bool(record_filter.selection.selectors)
    labels: dict[str, Mapping[str, str]] = {}
    if by_labels:
        labels = {device.key: device.labels for device in validate_manifests(paths).devices}
    chosen = [
        (key, record)
        for key, record in sorted(state.devices.items())
        if record_filter.matches(key, record, labels.get(key) if by_labels else {})
    ]
    return state, chosen


# --------------------------------------------------------------------------- login


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """Who `log_in` logged in, where, and until when (Unix seconds). Never the token."""

    user: str
    expire_at: float
    login_endpoint: str


def log_in(connection: Connection | None = None, say: Say = _quiet) -> LoggedIn:
    """`rrpcsync login`: log in once with the connection's credentials (docs/auth.md).
    Raises ConfigError for a static token (nothing to log in with) and LoginError."""
    import asyncio

    from rrpcsync.cloud.login import AppLogin, login_once

    source, _endpoint = (connection or Connection()).token_source(say)
    if not isinstance(source, AppLogin):
        raise ConfigError(
            "nothing to log in with: the credentials are a static access token; set "
            "RRPCSYNC_APP_KEY, RRPCSYNC_APP_SECRET, RRPCSYNC_USER and RRPCSYNC_PASSWORD "
            "(or pass --credentials-file)"
        )
    session = asyncio.run(login_once(source))
    return LoggedIn(session.user, session.expire_at, source.endpoint)


# --------------------------------------------------------------------------- moving state


def migrate_state(source: StateStore, target: StateStore, lock_timeout: float = 0.0) -> State:
    """`state migrate --to`: copy the state (lineage, serial, devices) and its run history to
    an empty store. Both are locked; the source is left as it was."""
    with (
        source.lock("state migrate", timeout=lock_timeout),
        target.lock("state migrate", timeout=lock_timeout),
    ):
        if target.exists() or target.load().devices:
            raise UsageError(
                f"{target.location} already holds a state; migrate only into an empty one"
            )
        state = source.load()
        if not state.exists and not state.devices:
            raise UsageError(f"{source.location} holds no state; nothing to migrate")
        target.replace(state)
        for run in source.runs():
            target.record_run(run)
    return state


def pull_state(store: StateStore) -> bytes:
    """`state pull`: the state as a JSON state file (any store), its serial kept."""
    from rrpcsync.state.jsonfile import encode_state

    state = store.load()
    return encode_state(state, state.serial)


def push_state(store: StateStore, path: str, lock_timeout: float = 0.0) -> State:
    """`state push FILE`: replace the stored state with a JSON state file, guarded.

    The file must have the store's lineage (a new store takes any), and must not be older
    than the store: a file with the store's serial (pulled, then edited) is saved as the next
    serial, one with a higher serial keeps it, one with a lower serial is refused.
    """
    from rrpcsync.state.jsonfile import read_state_file

    pushed = read_state_file(Path(path))
    if not pushed.exists:
        raise UsageError(f"{path}: no such state file")
    with store.lock("state push", timeout=lock_timeout):
        current = store.load()
        if current.exists:
            _check_push(path, pushed, current)
            if pushed.serial == current.serial:
                pushed.serial += 1
        store.replace(pushed)
    return pushed


def _check_push(path: str, pushed: State, current: State) -> None:
    if pushed.lineage != current.lineage:
        raise UsageError(
            f"{path} has lineage {pushed.lineage}, but {current.location} has lineage "
            f"{current.lineage}: it is another state; nothing was pushed"
        )
    if pushed.serial < current.serial:
        raise UsageError(
            f"{path} has serial {pushed.serial}, older than {current.location}'s "
            f"{current.serial} (another run wrote it since the pull): pull again, redo the edit; "
            "nothing was pushed"
        )


# --------------------------------------------------------------------------- adopt

ADOPT_PROBE = "probe"  # the device's drift probe reported the desired config
ADOPT_ASSUMED = "assumed"  # the operator vouched for it (`--assume-in-sync`)
ADOPTABLE = (Action.CREATE, Action.UPDATE, Action.RETRY)


@dataclass(frozen=True, slots=True)
class Adoption:
    """What `state adopt` records: devices as applied without sending, and those left out."""

    mode: str  # ADOPT_PROBE or ADOPT_ASSUMED
    adopt: tuple[Change, ...]
    left_out: tuple[tuple[Change, str], ...] = ()  # and why (drifted, unreachable, no probe)
    observations: Mapping[str, Any] = field(default_factory=dict)  # key → drift.Observation


def adopt_devices(
    paths: Sequence[str],
    store: StateStore,
    *,
    mode: str,
    selection: Selection | None = None,
    connection: Connection | None = None,
    sending: ApplyOptions | None = None,
    lock_timeout: float = 0.0,
    show: Callable[[Adoption], None] = lambda adoption: None,
    confirm: Callable[[Adoption], None] = lambda adoption: None,
    progress: ProgressFactory | None = None,
    say: Say = _quiet,
) -> Adoption:
    """`state adopt` (like `terraform import`): record the declared devices the plan would
    send to as applied, without sending their payload. With ADOPT_PROBE only those whose drift
    probe reports the desired config; ADOPT_ASSUMED takes the operator's word. Holds the lock;
    `show` sees the adoption, `confirm` raises to refuse."""
    if mode not in (ADOPT_PROBE, ADOPT_ASSUMED):
        raise UsageError(f"adopt mode must be {ADOPT_PROBE} or {ADOPT_ASSUMED}")
    sender = _Sender(connection or Connection(), sending, progress, say)
    with store.lock("state adopt", timeout=lock_timeout):
        planned = plan_manifests(paths, store, selection=selection, say=say)
        state, plan = planned.state, planned.plan
        candidates = tuple(c for c in plan.changes if c.action in ADOPTABLE)
        adoption = Adoption(mode, candidates)
        if mode == ADOPT_PROBE and candidates:
            declared = planned.manifests.devices if planned.manifests else ()
            adoption = _probed_adoption(candidates, declared, sender)
        show(adoption)
        if not adoption.adopt:
            return adoption
        confirm(adoption)
        from rrpcsync.state import utc_now

        started = utc_now()
        for change in adoption.adopt:
            seen = adoption.observations.get(change.key)
            state.put(change.key, adopted_record(change, mode, started, seen))
        store.save(state)
        store.record_run(_adopt_record(started, state))
    return adoption


def adopted_record(change: Change, mode: str, at: str, seen: Any = None) -> DeviceRecord:
    """Applied per the state, though nothing was sent: no request, no reply, `adopted` set."""
    from rrpcsync.model import Status

    return DeviceRecord(
        Status.APPLIED,
        payload_sha256=change.payload_sha256_after,
        payload=change.shown_payload,
        target_sha256=change.payload_sha256_after,
        applied_at=at,
        manifest=change.manifest,
        observed=seen.observed if seen is not None else None,
        observed_at=seen.at if seen is not None else None,
        adopted=mode,
    )


def _probed_adoption(
    candidates: Sequence[Change], desired: Sequence[DesiredDevice], sender: _Sender
) -> Adoption:
    from rrpcsync.manifests import probe as probes
    from rrpcsync.run import drift

    wanted = {change.key for change in candidates}
    devices = {d.key: d for d in desired if d.key in wanted}
    targets = [device for device in devices.values() if device.probe is not None]
    observations: dict[str, Any] = {}
    if targets:
        sender.say(f"Probing {len(targets)} device(s) before adopting them...")
        report = drift.probe_devices(
            targets, sender.publisher_factory(), sender.options(), sender.sink()
        )
        if report.fatal is not None:
            raise FatalApiError(fatal_message(report.fatal.code or "Unknown"))
        sender.say(drift.probe_summary(report))
        observations = report.observations
    adopt, left_out = [], []
    for change in candidates:
        device, seen = devices[change.key], observations.get(change.key)
        if device.probe is None:
            left_out.append((change, "its manifest has no spec.probe to ask it"))
        elif seen is None or not seen.answered:
            code = seen.code if seen is not None else "Unknown"
            left_out.append((change, f"unreachable: the probe got no usable answer ({code})"))
        elif not probes.compare(device.payload, seen.reported, device.probe.ignore).matches:
            left_out.append((change, "reports another config than the manifests declare"))
        else:
            adopt.append(change)
    return Adoption(ADOPT_PROBE, tuple(adopt), tuple(left_out), observations)


def _adopt_record(started: str, state: State) -> RunRecord:
    from collections import Counter

    from rrpcsync.state import RunRecord, utc_now

    counts = Counter(record.status.value for record in state.devices.values())
    return RunRecord(
        started_at=started,
        finished_at=utc_now(),
        command="state adopt",
        ci_url=_ci_url(os.environ),
        commit=os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA"),
        sent=0,
        applied=0,
        failed=0,
        failed_by_code={},
        counts=dict(sorted(counts.items())),
    )


# --------------------------------------------------------------------------- messages


FATAL_HINTS = {
    "InvalidParameterValue.InvalidAccessToken": (
        "set a fresh RRPCSYNC_ACCESS_TOKEN, or let rrpcsync log in itself (docs/auth.md)"
    ),
}


def run_failure(report: ApplyReport, endpoint: str) -> str | None:
    """Why the run stopped early as a whole, for the user; None when it did not."""
    if report.fatal is None:
        return None
    if report.endpoint_broken:
        detail = report.fatal.message or report.fatal.code or "no answer"
        return (
            f"cannot reach {endpoint}: {detail} ({report.fatal.code}); stopped after "
            f"{report.requests} request(s) with no answer; the devices not reached keep their "
            "previous record"
        )
    return fatal_message(report.fatal.code or "Unknown", report.fatal.message)


def fatal_message(code: str, message: str | None = None) -> str:
    """What to tell the user when the cloud refuses the run itself (a failed login: its own
    message, which names the credential to check)."""
    if code.startswith(LOGIN_CODE_PREFIX) and message:
        return message
    if code in FATAL_HINTS:
        return f"the access token was rejected ({code}); {FATAL_HINTS[code]}"
    if code == "Transport.CertificateError":
        return (
            "the endpoint's TLS certificate could not be verified (Transport.CertificateError); "
            "check RRPCSYNC_ENDPOINT (and SSL_CERT_FILE for a private CA); nothing was sent"
        )
    if code.startswith("HTTP."):
        return f"the endpoint refused the request ({code}); check RRPCSYNC_ENDPOINT"
    return f"the cloud refused the request ({code}); check the account's rights on this product"
