"""Manifest rollout policies: `spec.priority`, `dependsOn`, `rollout` (waves), `windows`.

Pure: reading the manifest form (a diagnostic per problem), checking dependencies across
manifests (unknown names, cycles), the `--waves` syntax, and the saved-plan form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from rrpcsync.errors import Diagnostic
from rrpcsync.manifests import windows
from rrpcsync.model import ManifestPolicy, RolloutSpec

DEFAULT_POLICY = ManifestPolicy()
DEFAULT_MIN_SAMPLE = 20

Report = Callable[[tuple[Any, ...], str], None]

# manifest key -> RolloutSpec field
ROLLOUT_KEYS = {
    "canary": "canary",
    "waves": "waves",
    "maxFailures": "max_failures",
    "maxFailureRate": "max_failure_rate",
    "minSample": "min_sample",
}


# --------------------------------------------------------------------------- waves


def wave_value(text: str) -> tuple[bool, float]:
    """(is a percentage, number) of one wave: "25" devices or "10%"; ValueError if neither."""
    is_percent = text.endswith("%")
    number_text = text[:-1] if is_percent else text
    try:
        number = float(number_text) if is_percent else int(number_text)
    except ValueError:
        raise ValueError(f"wave {text!r} is neither a device count nor a percentage") from None
    if is_percent and not 0 < number <= 100:
        raise ValueError(f"wave {text!r} must be a percentage above 0% and at most 100%")
    if not is_percent and number < 1:
        raise ValueError(f"wave {text!r} must be at least 1 device")
    return is_percent, number


def check_waves(waves: Sequence[str]) -> None:
    """Waves are cumulative: counts must grow, and so must percentages. ValueError if not."""
    if not waves:
        raise ValueError("waves must list at least one wave")
    last: dict[bool, tuple[float, str]] = {}
    for text in waves:
        is_percent, number = wave_value(text)
        before = last.get(is_percent)
        if before is not None and number <= before[0]:
            kind = "percentages" if is_percent else "device counts"
            raise ValueError(f"waves are cumulative: {kind} must grow ({text} after {before[1]})")
        last[is_percent] = (number, text)


def parse_waves(text: str) -> tuple[str, ...]:
    """`--waves 1,10%,50%,100%` -> ("1", "10%", "50%", "100%"); ValueError if invalid."""
    waves = tuple(part.strip() for part in text.split(",") if part.strip())
    check_waves(waves)
    return waves


# --------------------------------------------------------------------------- manifest form


def parse_policy(spec: Mapping[str, Any], report: Report) -> ManifestPolicy:
    """The policy of one schema-valid manifest `spec`; problems go to `report`."""
    raw = spec.get("rollout") or {}
    values = {field: raw[key] for key, field in ROLLOUT_KEYS.items() if key in raw}
    if "waves" in values:
        values["waves"] = tuple(str(item) for item in values["waves"])  # 25 or "10%"
        try:
            check_waves(values["waves"])
        except ValueError as exc:
            report(("spec", "rollout", "waves"), str(exc))
    if "max_failure_rate" in values:
        values["max_failure_rate"] = float(values["max_failure_rate"])
    return ManifestPolicy(
        priority=int(spec.get("priority", 0)),
        depends_on=tuple(spec.get("dependsOn") or ()),
        rollout=RolloutSpec(**values),
        windows=windows.parse_windows(spec.get("windows"), report),
    )


class Declared(Protocol):
    """What dependency checks need of a loaded manifest (manifest.ManifestInfo)."""

    @property
    def name(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def policy(self) -> ManifestPolicy: ...
    @property
    def dependency_marks(self) -> tuple[tuple[int, int], ...]: ...


def dependency_problems(manifests: Sequence[Declared]) -> list[Diagnostic]:
    """Unknown `dependsOn` names and cycles, each at the line of the offending entry."""
    by_name = {info.name: info for info in manifests}
    problems = [
        _at_entry(info, index, f"dependsOn: no manifest is named {name!r}")
        for info in manifests
        for index, name in enumerate(info.policy.depends_on)
        if name not in by_name
    ]
    for cycle in _cycles({n: i.policy.depends_on for n, i in by_name.items()}):
        first = by_name[cycle[0]]
        index = first.policy.depends_on.index(cycle[1])
        problems.append(_at_entry(first, index, "dependsOn cycle: " + " → ".join(cycle)))
    return problems


def declared_policies(manifests: Iterable[Declared]) -> dict[str, ManifestPolicy]:
    """The policies that differ from the default, by manifest name."""
    return {info.name: info.policy for info in manifests if info.policy != DEFAULT_POLICY}


def _at_entry(info: Declared, index: int, message: str) -> Diagnostic:
    marks = info.dependency_marks
    line, column = marks[index] if index < len(marks) else (info.line, 1)
    return Diagnostic(info.file, line, column, f"$.spec.dependsOn[{index}]", message)


def _cycles(graph: Mapping[str, Sequence[str]]) -> Iterator[list[str]]:
    """Each dependency cycle once, as [a, b, …, a] starting at its smallest name."""
    seen: set[frozenset[str]] = set()
    done: set[str] = set()
    for start in sorted(graph):
        stack: list[str] = []
        yield from _cycles_from(start, graph, stack, done, seen)


def _cycles_from(
    node: str,
    graph: Mapping[str, Sequence[str]],
    stack: list[str],
    done: set[str],
    seen: set[frozenset[str]],
) -> Iterator[list[str]]:
    if node in done or node not in graph:
        return
    if node in stack:
        loop = stack[stack.index(node) :]
        if frozenset(loop) not in seen:
            seen.add(frozenset(loop))
            pivot = loop.index(min(loop))
            rotated = loop[pivot:] + loop[:pivot]
            yield [*rotated, rotated[0]]
        return
    stack.append(node)
    for dependency in graph[node]:
        yield from _cycles_from(dependency, graph, stack, done, seen)
    stack.pop()
    done.add(node)


# --------------------------------------------------------------------------- saved plans


def policy_to_document(policy: ManifestPolicy) -> dict[str, Any]:
    """The manifest form (`spec.priority`, `dependsOn`, `rollout`) of the keys that are set."""
    doc: dict[str, Any] = {}
    if policy.priority:
        doc["priority"] = policy.priority
    if policy.depends_on:
        doc["dependsOn"] = list(policy.depends_on)
    rollout = {
        key: value
        for key, field in ROLLOUT_KEYS.items()
        if (value := getattr(policy.rollout, field)) is not None
    }
    if "waves" in rollout:  # counts as integers, percentages as "10%", as in manifests
        rollout["waves"] = [w if w.endswith("%") else int(w) for w in rollout["waves"]]
    if rollout:
        doc["rollout"] = rollout
    if policy.windows:
        doc["windows"] = [windows.to_document(window) for window in policy.windows]
    return doc


def policy_from_document(doc: Any) -> ManifestPolicy:
    """Read `policy_to_document` output back; ValueError when it is malformed."""
    check_with_schema(POLICY_SCHEMA, doc, "manifest policy")
    problems: list[str] = []
    policy = parse_policy(doc, lambda _path, message: problems.append(message))
    if problems:
        raise ValueError(problems[0])
    return policy


POLICY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "priority": {"type": "integer"},
        "dependsOn": {"type": "array", "items": {"$ref": "#/$defs/manifestName"}},
        "rollout": {"$ref": "#/$defs/rollout"},
        "windows": {"$ref": "#/$defs/windows"},
    },
}


def check_with_schema(schema: Mapping[str, Any], doc: Any, what: str) -> None:
    """Check a saved-plan fragment against the manifest schema's definitions; ValueError."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from rrpcsync.manifests.loader import schema as manifest_schema

    full = manifest_schema()  # the same $id: its definitions' own references resolve
    composed = {"$id": full["$id"], "$defs": full["$defs"], **schema}
    error = best_match(Draft202012Validator(composed).iter_errors(doc))
    if error is not None:
        raise ValueError(f"malformed {what}: {error.message}")


def effective_min_sample(*candidates: int | None) -> int:
    return next((value for value in candidates if value is not None), DEFAULT_MIN_SAMPLE)
