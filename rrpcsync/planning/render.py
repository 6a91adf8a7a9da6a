"""Pure formatting of diagnostics, plans and results: text, JSON, markdown, GitHub annotations."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rrpcsync import jsontext
from rrpcsync.errors import Diagnostic
from rrpcsync.manifests.expect import describe as describe_expectation
from rrpcsync.manifests.explain import Explanation
from rrpcsync.model import Action, Change, Plan, RolloutSpec, SelectionCount, Summary
from rrpcsync.planning.schedule import Step, by_level, level_steps
from rrpcsync.secrets import MASK

MARKDOWN_LIMIT = 60_000  # GitHub comments hold 65,536 characters; leave room for wrappers
MARKDOWN_MARKER = "<!-- rrpcsync-plan -->"
SECTION_LINES = 50  # changes listed per manifest in markdown before "… and N more"

_ANSI = {
    "green": "32",
    "yellow": "33",
    "red": "31",
    "cyan": "36",
    "magenta": "35",
    "bold": "1",
    "dim": "2",
    "new": "1;32",  # a changed value's new text: bold green, the brightest thing on the line
}
SYMBOLS = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.RETRY: ("↻", "cyan"),
    Action.ORPHAN: ("-", "red"),
    Action.DRIFT: ("!", "magenta"),
}
NO_MANIFEST = "(no longer declared)"
NO_FLAGS = RolloutSpec()  # no rollout flags given: the manifests' own spec.rollout applies


def paint(text: str, style: str, color: bool) -> str:
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m" if color else text


# --------------------------------------------------------------------------- diagnostics


def diagnostic_line(diag: Diagnostic, level: str = "error") -> str:
    return f"{diag.location()}: {level}: {diag.path}: {diag.message}"


def diagnostics_json(diags: Sequence[Diagnostic]) -> str:
    items = [
        {
            "file": d.file,
            "line": d.line,
            "column": d.column,
            "path": d.path,
            "message": d.message,
        }
        for d in diags
    ]
    return json.dumps(items, indent=2, ensure_ascii=False)


def github_annotation(diag: Diagnostic, level: str = "error") -> str:
    """A workflow command GitHub shows on the file's line (escaped as the runner expects)."""
    props = f"file={_gh_prop(diag.file)},line={diag.line},col={diag.column}"
    return f"::{level} {props}::{_gh_data(f'{diag.path}: {diag.message}')}"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


# --------------------------------------------------------------------------- payload diffs


def payload_diff(before: str | None, after: str | None, limit: int = 20) -> list[str]:
    """Changed keys of two JSON payloads as `path: old → new` lines (whole values otherwise)."""
    return [_diff_line(item, color=False) for item in diff_items(before, after, limit)]


DiffItem = tuple[str, str, str]  # (path or "" for whole values / notes, old, new)


def diff_items(before: str | None, after: str | None, limit: int = 20) -> list[DiffItem]:
    """The changes of `payload_diff` as (path, old, new); a note has old == new == ""."""
    old, new = _as_json(before), _as_json(after)
    if isinstance(old, dict) and isinstance(new, dict):
        items = list(_dict_diff(old, new, ""))
    else:
        items = [("", _short(before), _short(after))]
    if len(items) > limit:
        items = [*items[:limit], (f"… and {len(items) - limit} more changed keys", "", "")]
    return items


def _diff_line(item: DiffItem, *, color: bool) -> str:
    path, old, new = item
    if not old and not new:
        return path
    # the new value is the most visible text; the old one is struck in red
    shown = f"{paint(old, 'red', color)} → {paint(new, 'new', color)}"
    return f"{path}: {shown}" if path else shown


def _as_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return jsontext.loads(text)
    except ValueError:  # not JSON (a verbatim payload), or too deep to diff: shown as text
        return text


def _dict_diff(old: dict[str, Any], new: dict[str, Any], prefix: str) -> Iterator[DiffItem]:
    for key in sorted(old.keys() | new.keys()):
        path = f"{prefix}.{key}" if prefix else key
        if key not in new:
            yield path, _short_value(old[key]), "(removed)"
        elif key not in old:
            yield path, "(absent)", _short_value(new[key])
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            yield from _dict_diff(old[key], new[key], path)
        elif old[key] != new[key]:
            yield path, _short_value(old[key]), _short_value(new[key])


def _short_value(value: Any) -> str:
    return _short(json.dumps(value, ensure_ascii=False, sort_keys=True))


def _short(text: str | None, width: int = 80) -> str:
    if text is None:
        return "(none)"
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- plan: summary


def summary_sentence(
    summary: Summary, drift_checked: bool = False, selection: SelectionCount | None = None
) -> str:
    drifted = f"{summary.drift} drifted, " if drift_checked or summary.drift else ""
    deferred = f" {summary.deferred} deferred to a maintenance window." if summary.deferred else ""
    return (
        f"Plan: {summary.create} to create, {summary.update} to update, "
        f"{summary.retry} to retry, {drifted}{summary.orphan} orphaned, {summary.noop} unchanged."
        f"{selection_note(selection)}"
        f"{deferred}"
    )


def selection_note(selection: SelectionCount | None) -> str:
    """` (selection: 12 of 400 declared devices)` when --target/--exclude/--selector is active."""
    if selection is None:
        return ""
    return f" (selection: {selection.selected} of {selection.declared} declared devices)"


def by_manifest(changes: Iterable[Change]) -> dict[str, list[Change]]:
    groups: dict[str, list[Change]] = defaultdict(list)
    for change in changes:
        groups[change.manifest or NO_MANIFEST].append(change)
    return dict(sorted(groups.items()))


def change_headline(change: Change) -> str:
    symbol, _ = SYMBOLS[change.action]
    text = f"{symbol} {change.key}"
    if change.source:
        text += f"  ({change.source}{_overrides_note(change)})"
    if change.deferred_until is not None:
        text += f"  deferred until {change.deferred_until}"
    if change.action is Action.RETRY:
        text += f"  last error: {change.last_error_code or 'unknown'}"
    if change.action is Action.ORPHAN:
        text += "  no longer declared; forgotten with --prune, nothing is sent"
    if change.action is Action.DRIFT:
        text += f"  {drift_reason(change)}"
    return text


def _overrides_note(change: Change) -> str:
    """ "; overrides m.yaml:16,18" (the lines of the overrides that built the payload)."""
    if not change.overrides:
        return ""
    lines: dict[str, list[str]] = defaultdict(list)
    for source in change.overrides:
        file, _, line = source.rpartition(":")
        lines[file].append(line)
    return "; overrides " + ", ".join(f"{file}:{','.join(at)}" for file, at in lines.items())


def drift_reason(change: Change) -> str:
    if change.reason == "stale":
        return f"stale: last applied {change.applied_at or 'at an unknown time'}, re-sent"
    return "drifted: the device reports another config (reported → desired)"


Detail = DiffItem | str  # a changed key, or a line of text (a new payload, the reply check)


def change_details(change: Change) -> list[str]:
    return [_detail_line(item, color=False) for item in _details(change)]


def _details(change: Change) -> tuple[Detail, ...]:
    details: list[Detail] = list(_payload_details(change))
    if change.expect is not None and change.action.sends:
        details.append(f"expect: {describe_expectation(change.expect)}")
    return tuple(details)


def _payload_details(change: Change) -> list[Detail]:
    if change.action is Action.UPDATE:
        items = diff_items(change.payload_before, change.shown_payload)
        return list(items) if items else _sensitive_changes(change)
    if change.action is Action.CREATE:
        return [_short(change.shown_payload, 120)]
    if change.action is Action.DRIFT and change.reason != "stale":
        return list(diff_items(change.observed, change.shown_payload))
    return []


def _sensitive_changes(change: Change) -> list[Detail]:
    """Masked payloads that look the same but hash differently: a secret changed. Name the
    keys holding secrets, never a value."""
    shown = _as_json(change.shown_payload)
    paths = list(_masked_paths(shown, "")) if isinstance(shown, dict) else []
    if not paths:
        return [("(sensitive value changed)", "", "")]
    if len(paths) == 1:
        return [(f"{paths[0]}: (sensitive value changed)", "", "")]
    return [(f"{', '.join(paths)}: (a sensitive value changed)", "", "")]


def _masked_paths(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _masked_paths(value[key], f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _masked_paths(item, f"{prefix}[{index}]")
    elif isinstance(value, str) and MASK in value:
        yield prefix or "payload"


def _detail_line(item: Detail, *, color: bool) -> str:
    return item if isinstance(item, str) else _diff_line(item, color=color)


# --------------------------------------------------------------------------- plan: groups


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """Changes of one manifest that are identical but for the device: same action, same diff."""

    manifest: str
    changes: tuple[Change, ...]
    details: tuple[Detail, ...]

    @property
    def first(self) -> Change:
        return self.changes[0]


def _group_key(change: Change, details: tuple[Detail, ...]) -> tuple[object, ...]:
    return (change.action, change.reason, change.last_error_code, change.deferred_until, details)


def group_changes(manifest: str, changes: Sequence[Change], grouped: bool) -> list[ChangeGroup]:
    """Identical changes together, in order of first appearance; one group per change when
    not `grouped` (`--detail full`)."""
    if not grouped:
        return [ChangeGroup(manifest, (c,), _details(c)) for c in changes]
    found: dict[tuple[object, ...], tuple[list[Change], tuple[Detail, ...]]] = {}
    for change in changes:
        details = _details(change)
        found.setdefault(_group_key(change, details), ([], details))[0].append(change)
    return [ChangeGroup(manifest, tuple(members), details) for members, details in found.values()]


def group_lines(group: ChangeGroup, *, color: bool, indent: str, keys: int) -> Iterator[str]:
    """A lone change as `+ KEY (file:line)` and its details; a group as one headline with the
    shared details and the first `keys` device keys."""
    change = group.first
    symbol, style = SYMBOLS[change.action]
    details = [_detail_line(item, color=color) for item in group.details]
    if len(group.changes) == 1:
        yield paint(change_headline(change), style, color)
        yield from (indent + line for line in details)
        return
    head = paint(f"{symbol} {len(group.changes):,} devices in {group.manifest}", style, color)
    note = _group_note(change)
    if len(group.details) == 1 and not isinstance(group.details[0], str) and not note:
        yield f"{head}: {details[0]}"
        details = []
    else:
        yield head + paint(note, style, color)
    yield from (indent + line for line in details)
    yield from (indent + paint(line, "dim", color) for line in _member_lines(group, keys))


def _group_note(change: Change) -> str:
    deferred = f"  deferred until {change.deferred_until}" if change.deferred_until else ""
    return deferred + _action_note(change)


def _action_note(change: Change) -> str:
    if change.action is Action.RETRY:
        return f"  last error: {change.last_error_code or 'unknown'}"
    if change.action is Action.ORPHAN:
        return "  no longer declared; forgotten with --prune, nothing is sent"
    if change.action is Action.DRIFT:
        return (
            "  stale: last applied longer ago than --resync-after, re-sent"
            if change.reason == ("stale")
            else "  drifted: the devices report another config (reported → desired)"
        )
    return ""


def _member_lines(group: ChangeGroup, keys: int) -> Iterator[str]:
    for change in group.changes[:keys]:
        where = f"  ({change.source}{_overrides_note(change)})" if change.source else ""
        yield change.key + where
    if len(group.changes) > keys:
        yield f"… and {len(group.changes) - keys:,} more"


# --------------------------------------------------------------------------- plan: rollout


def rollout_lines(plan: Plan, flags: RolloutSpec = NO_FLAGS, keys: int = 5) -> list[str]:
    """The order of manifests (`dependsOn`), each level's canary devices and wave sizes."""
    sending = [c for c in plan.changes if c.action.sends]
    if not sending:
        return []
    levels = [(names, group) for names, group in by_level(sending, plan.policies) if group]
    lines = []
    if len(levels) > 1:
        order = " → ".join(", ".join(names) for names, _ in levels)
        lines.append(f"Order (dependsOn): {order}")
    for names, group in levels:
        where = f" of {', '.join(names)}" if len(levels) > 1 else ""
        lines += _staging_lines(level_steps(group, plan.policies, flags), where, keys)
    return lines


def _staging_lines(steps: Sequence[Step], where: str, keys: int) -> list[str]:
    lines = []
    waves = [len(step.changes) for step in steps if not step.canary]
    for step in steps:
        if step.canary:
            shown = ", ".join(c.key for c in step.changes[:keys])
            more = len(step.changes) - keys
            tail = f", … and {more:,} more" if more > 0 else ""
            lines.append(f"Canary{where}: {len(step.changes):,} device(s): {shown}{tail}")
    if len(waves) > 1 or lines:
        sizes = ", ".join(f"{n:,}" for n in waves)
        lines.append(f"Waves{where}: {len(waves)} wave(s) of {sizes} device(s)")
    return lines


# --------------------------------------------------------------------------- plan: text

GROUP_KEYS = 5  # device keys listed under a group of identical changes


def plan_text(
    plan: Plan,
    *,
    color: bool = False,
    prune: bool = False,
    grouped: bool = True,
    rollout: RolloutSpec = NO_FLAGS,
) -> Iterator[str]:
    """The plan for a terminal; identical changes grouped unless not `grouped` (`--detail
    full`), then the summary and the rollout preview."""
    if not plan.summary.has_changes:
        yield (
            f"No changes. {plan.summary.noop} device(s) already match the manifests."
            f"{selection_note(plan.selection)}"
        )
        yield from drift_check_lines(plan)
        return
    for manifest, changes in by_manifest(plan.changes).items():
        yield paint(f"{manifest}:", "bold", color)
        for group in group_changes(manifest, changes, grouped):
            lines = group_lines(group, color=color, indent="    ", keys=GROUP_KEYS)
            yield from ("  " + line for line in lines)
    yield ""
    yield paint(summary_sentence(plan.summary, plan.refreshed, plan.selection), "bold", color)
    if plan.summary.orphan and not prune:
        yield "Orphaned devices are only reported; `apply --prune` forgets them from the state."
    yield from rollout_lines(plan, rollout)
    yield from drift_check_lines(plan)


def drift_check_lines(plan: Plan) -> Iterator[str]:
    """How the drift check went: devices probed, and those whose probe got no answer."""
    summary = plan.summary
    if not plan.refreshed or not summary.probed:
        return
    line = f"Drift check: {summary.probed} device(s) probed, {summary.unreachable} unreachable"
    if not plan.unreachable:
        yield line + "."
        return
    yield line + " (the probe got no usable answer; nothing is sent to them):"
    for item in plan.unreachable:
        where = f"  ({item.source})" if item.source else ""
        yield f"  ? {item.key}{where}  {item.code}: {item.message}"


# --------------------------------------------------------------------------- plan: markdown


def plan_markdown(
    plan: Plan,
    *,
    limit: int = MARKDOWN_LIMIT,
    title: str = "rrpcsync plan",
    grouped: bool = True,
    rollout: RolloutSpec = NO_FLAGS,
) -> str:
    """A pull-request comment: summary table, the rollout preview, then one collapsible
    section per manifest with its identical changes grouped (unless not `grouped`)."""
    summary = plan.summary
    head = [
        MARKDOWN_MARKER,
        f"### {title}",
        "",
        "| create | update | retry | orphaned | unchanged |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary.create} | {summary.update} | {summary.retry} | {summary.orphan} "
        f"| {summary.noop} |",
        "",
    ]
    head += _markdown_notes(plan)
    head += _markdown_drift(plan)
    head += plan_chart(summary)
    preview = rollout_lines(plan, rollout)
    head += [*(f"- {_html(line)}" for line in preview), ""] if preview else []
    if summary.deferred:
        head += [
            f"**Deferred:** {summary.deferred} change(s) wait for their maintenance window "
            "(apply sends them inside it, or with `--ignore-windows`).",
            "",
        ]
    if not summary.has_changes:
        return "\n".join([*head, "No changes: every device matches the manifests.", ""])
    footer = "_Run `rrpcsync plan` locally (or see the job log) for the full plan._"
    budget = limit - len("\n".join(head)) - len(footer) - 200
    sections, left_out = _markdown_sections(plan.changes, budget, grouped)
    tail = (
        [f"**{left_out} change(s) not shown here to keep the comment short.**"] if left_out else []
    )
    return "\n".join([*head, *sections, *tail, "", footer, ""])


def _markdown_notes(plan: Plan) -> list[str]:
    """A missing state and an active selection, said where a reviewer looks first."""
    lines = []
    if plan.new_state is not None:
        where = _md_code(plan.new_state)
        lines += [f"**No state** at `{where}`: every declared device is new.", ""]
    if plan.selection is not None:
        selected, declared = plan.selection
        lines += [f"**Selection:** {selected} of {declared} declared devices.", ""]
    return lines


def _md_code(text: str) -> str:
    return _html(text.replace("`", "'"))


def plan_chart(summary: Summary) -> list[str]:
    """The changes as a mermaid pie (GitHub draws it), with a blank line after; none without
    changes."""
    slices = [
        ("create", summary.create),
        ("update", summary.update),
        ("retry", summary.retry),
        ("drift", summary.drift),
        ("orphaned", summary.orphan),
    ]
    chart = mermaid_pie(f"{summary.to_send + summary.orphan} change(s)", slices)
    return [*chart, ""] if chart else []


# --------------------------------------------------------------------------- mermaid

MERMAID_SLICES = 8  # more slices are unreadable: the smallest are summed as "other"
MERMAID_LABEL_CHARS = 48
_MERMAID_UNSAFE = re.compile(r"[\"`#;\\\x00-\x1f\x7f\u2028\u2029]")


def mermaid_label(text: str) -> str:
    """Text safe inside a mermaid string: no double quote, backtick, `#`, `;` or line break,
    so a label (an error code from a reply, say) cannot end its string, the diagram or the
    markdown code fence."""
    cleaned = " ".join(_MERMAID_UNSAFE.sub(" ", text).split()) or "?"
    if len(cleaned) <= MERMAID_LABEL_CHARS:
        return cleaned
    return cleaned[: MERMAID_LABEL_CHARS - 1] + "…"


def mermaid_pie(title: str, slices: Iterable[tuple[str, int]]) -> list[str]:
    """A fenced ```mermaid pie with its numbers shown; no lines when every slice is 0
    (mermaid refuses slices that are not positive, so zeros are left out)."""
    shown = [(name, count) for name, count in slices if count > 0]
    if not shown:
        return []
    if len(shown) > MERMAID_SLICES:
        ordered = sorted(shown, key=lambda item: -item[1])
        rest = sum(count for _, count in ordered[MERMAID_SLICES - 1 :])
        shown = [*ordered[: MERMAID_SLICES - 1], ("other", rest)]
    lines = ["```mermaid", "pie showData", f"    title {mermaid_label(title)}"]
    lines.extend(f'    "{mermaid_label(name)}" : {count}' for name, count in shown)
    lines.append("```")
    return lines


def _markdown_drift(plan: Plan) -> list[str]:
    """Drift-checked plans: the counts, and the devices whose probe got no answer."""
    if not plan.refreshed:
        return []
    summary = plan.summary
    lines = [
        f"**Drift check:** {summary.drift} drifted, {summary.probed} probed, "
        f"{summary.unreachable} unreachable.",
        "",
    ]
    if plan.unreachable:
        shown = plan.unreachable[:SECTION_LINES]
        lines.append(
            f"<details><summary><b>Unreachable</b>: {len(plan.unreachable)} device(s), "
            "nothing sent</summary>"
        )
        lines.append("")
        lines.extend(f"- `{u.key}`: {_html(f'{u.code}: {u.message}')}" for u in shown)
        if len(plan.unreachable) > len(shown):
            lines.append(f"- … and {len(plan.unreachable) - len(shown)} more")
        lines.extend(["</details>", ""])
    return lines


def _markdown_sections(
    changes: Sequence[Change], budget: int, grouped: bool
) -> tuple[list[str], int]:
    """Sections that fit in `budget` characters, and how many changes were left out."""
    lines: list[str] = []
    used, shown = 0, 0
    for manifest, group in by_manifest(changes).items():
        section, listed = _markdown_section(manifest, group, grouped)
        size = sum(len(line) + 1 for line in section)
        if used + size > budget:
            continue
        lines.extend(section)
        used += size
        shown += listed
    return lines, len(changes) - shown


def _markdown_section(
    manifest: str, changes: Sequence[Change], grouped: bool
) -> tuple[list[str], int]:
    """One manifest: at most SECTION_LINES groups (every distinct diff of a few), their device
    keys shortened; the number of changes shown."""
    counts: dict[str, int] = defaultdict(int)
    for change in changes:
        counts[change.action.value] += 1
    label = ", ".join(f"{n:,} {action}" for action, n in sorted(counts.items()))
    groups = group_changes(manifest, changes, grouped)
    shown = groups[:SECTION_LINES]
    body = ["```diff"]
    for group in shown:
        lines = group_lines(group, color=False, indent="    ", keys=GROUP_KEYS)
        body.extend(_md_escape_fence(line) for line in lines)
    listed = sum(len(group.changes) for group in shown)
    if len(changes) > listed:
        body.append(f"… and {len(changes) - listed:,} more in this manifest")
    body.append("```")
    summary = f"<details><summary><b>{_html(manifest)}</b>: {label}</summary>"
    return [summary, "", *body, "</details>"], listed


def _md_escape_fence(text: str) -> str:
    return text.replace("```", "ˋˋˋ")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- apply results


LISTED_PER_CODE = 20  # failed devices named per error code in apply's summary
FAILED_HINT = "rrpcsync state list --status failed"


def apply_summary(
    applied: int,
    failed_by_code: dict[str, int],
    not_sent: int,
    stale: int,
    pruned: int,
    elapsed: float,
    requests: int,
    interrupted: bool = False,
    deferred: int = 0,
) -> list[str]:
    failed = sum(failed_by_code.values())
    rate = requests / elapsed if elapsed > 0 else 0.0
    head = "Apply interrupted" if interrupted else "Apply"
    waiting = f", {deferred} deferred" if deferred else ""
    lines = [
        f"{head}: {applied} applied, {failed} failed, {not_sent} not sent, {stale} stale, "
        f"{pruned} pruned{waiting}; {requests} request(s) in {elapsed:.1f}s ({rate:.1f}/s)."
    ]
    for code, count in _by_count(failed_by_code):
        lines.append(f"  failed {count:>6}  {code}")
    return lines


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def failed_device_lines(
    failed: Mapping[str, str], limit: int = LISTED_PER_CODE, hint: str = FAILED_HINT
) -> list[str]:
    """The failed devices by error code (key → code), `limit` per code, then how many more."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(failed):
        groups[failed[key]].append(key)
    lines: list[str] = []
    for code, _ in _by_count({code: len(keys) for code, keys in groups.items()}):
        keys = groups[code]
        lines.append(f"Failed with {code} ({len(keys)}):")
        lines.extend(f"  {key}" for key in keys[:limit])
        if len(keys) > limit:
            lines.append(f"  … and {len(keys) - limit} more: {hint}")
    return lines


def device_list_lines(title: str, keys: Sequence[str], limit: int = LISTED_PER_CODE) -> list[str]:
    """`title (N):` then up to `limit` keys, then how many more."""
    if not keys:
        return []
    ordered = sorted(keys)
    lines = [f"{title} ({len(ordered)}):", *(f"  {key}" for key in ordered[:limit])]
    if len(ordered) > limit:
        lines.append(f"  … and {len(ordered) - limit} more")
    return lines


# --------------------------------------------------------------------------- explain


def explanation_lines(explained: Explanation, change: Change | None, schedule: str) -> list[str]:
    """`plan --explain KEY`: the device, its layers in merge order, each value's origin."""
    device = explained.device
    labels = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "(none)"
    lines = [
        f"{device.key}  ({device.source})",
        f"  manifest: {device.manifest}  ({explained.manifest_source})",
        f"  labels: {labels}",
        f"  windows: {schedule}",
        "Layers, each deep-merged over the one before:",
    ]
    for number, layer in enumerate(explained.layers, 1):
        what = "(nothing)" if layer.payload is None else _short(_json_text(layer.payload), 60)
        lines.append(f"  {number}. {layer.name}  ({layer.source})  {what}")
    lines.append("Payload, each value with the layer that set it:")
    width = max((len(a.path or "(payload)") for a in explained.values), default=0)
    for item in explained.values:
        value = _short(json.dumps(item.value, ensure_ascii=False, sort_keys=True), 60)
        lines.append(f"  {item.path or '(payload)':<{width}} = {value}  ← {item.layer.name}")
    lines.append("Plan: " + (change_headline(change) if change else "unchanged"))
    return lines


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
