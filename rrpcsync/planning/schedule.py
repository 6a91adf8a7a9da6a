"""The order in which apply sends a plan's changes: levels, canaries and waves. Pure.

- Levels: a manifest's level is 0 without `dependsOn`, else one more than its deepest
  dependency; level N starts once level N-1 has finished (docs/rollouts.md).
- Within a level, higher `priority` goes first.
- Staging: the `--canary`/`--waves` flags stage each level's devices as one group, ordered
  round-robin across manifests (by priority, then name) so that every wave samples every
  manifest; without them each manifest with `spec.rollout` canary/waves is its own group.
  All groups' canaries form the level's first step; then wave k of every group is step k.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rrpcsync.manifests.policy import DEFAULT_POLICY, wave_value
from rrpcsync.model import Change, ManifestPolicy, RolloutSpec


@dataclass(frozen=True, slots=True)
class Step:
    """Changes dispatched together; the next step starts when every one has a result."""

    changes: tuple[Change, ...]
    label: str  # "canary", "wave 2/4", "all"
    canary: bool = False  # every change must succeed, or the rollout stops


# --------------------------------------------------------------------------- wave math


def wave_targets(waves: Sequence[str], total: int) -> list[int]:
    """Cumulative device counts of each wave for `total` devices (a final 100% is implied).

    A count is capped at `total`; a percentage is rounded up (10% of 5 is 1), so no wave is
    empty unless the one before it already reached its size; empty waves are dropped.
    """
    targets: list[int] = []
    reached = 0
    for text in waves:
        is_percent, number = wave_value(text)
        wanted = math.ceil(total * number / 100 - 1e-9) if is_percent else int(number)
        target = min(total, max(reached, wanted))
        if target > reached:
            targets.append(target)
            reached = target
    if reached < total:
        targets.append(total)
    return targets


def wave_sizes(waves: Sequence[str] | None, total: int) -> list[int]:
    """The size of each wave (increments of `wave_targets`); one wave of all without waves."""
    if total <= 0:
        return []
    targets = wave_targets(waves or (), total)
    return [b - a for a, b in zip([0, *targets], targets, strict=False)]


# --------------------------------------------------------------------------- levels


def levels(policies: Mapping[str, ManifestPolicy], names: Iterable[str]) -> dict[str, int]:
    """The dependency level of every manifest in `names` and of everything they depend on."""
    found: dict[str, int] = {}

    def level(name: str, path: frozenset[str]) -> int:
        if name in found:
            return found[name]
        deps = [d for d in policies.get(name, DEFAULT_POLICY).depends_on if d not in path]
        found[name] = 1 + max((level(d, path | {name}) for d in deps), default=-1)
        return found[name]

    for name in sorted(set(names) | set(policies)):
        level(name, frozenset())
    return found


def by_level(
    changes: Sequence[Change], policies: Mapping[str, ManifestPolicy]
) -> list[tuple[list[str], list[Change]]]:
    """[(manifests of level N, changes of level N)] for N = 0, 1, …; manifests without changes
    are listed too, so that blocking passes through them."""
    level_of = levels(policies, (c.manifest or "" for c in changes))
    count = 1 + max(level_of.values(), default=0)
    names: list[list[str]] = [[] for _ in range(count)]
    grouped: list[list[Change]] = [[] for _ in range(count)]
    for name in sorted(level_of):
        names[level_of[name]].append(name)
    for change in changes:
        grouped[level_of[change.manifest or ""]].append(change)
    return list(zip(names, grouped, strict=True))


# --------------------------------------------------------------------------- staging


def _priority(policies: Mapping[str, ManifestPolicy], change: Change) -> int:
    return policies.get(change.manifest or "", DEFAULT_POLICY).priority


def by_priority(changes: Iterable[Change], policies: Mapping[str, ManifestPolicy]) -> list[Change]:
    """Higher priority first; plan order otherwise (a stable sort)."""
    return sorted(changes, key=lambda change: -_priority(policies, change))


def interleaved(changes: Iterable[Change], policies: Mapping[str, ManifestPolicy]) -> list[Change]:
    """Round-robin across manifests: by priority (higher first), then round, then name."""
    rounds: defaultdict[str, int] = defaultdict(int)
    keyed = []
    for change in changes:
        manifest = change.manifest or ""
        keyed.append(((-_priority(policies, change), rounds[manifest], manifest), change))
        rounds[manifest] += 1
    keyed.sort(key=lambda pair: pair[0])
    return [change for _, change in keyed]


@dataclass(frozen=True, slots=True)
class _Group:
    canary: tuple[Change, ...]
    waves: tuple[tuple[Change, ...], ...]


def _staged(ordered: Sequence[Change], canary: int | None, waves: Sequence[str] | None) -> _Group:
    head = tuple(ordered[: canary or 0])
    rest = ordered[len(head) :]
    parts, start = [], 0
    for size in wave_sizes(waves, len(rest)):
        parts.append(tuple(rest[start : start + size]))
        start += size
    return _Group(head, tuple(parts))


def is_staged(spec: RolloutSpec) -> bool:
    return bool(spec.canary) or spec.waves is not None


def _groups(
    changes: Sequence[Change], policies: Mapping[str, ManifestPolicy], flags: RolloutSpec
) -> list[_Group]:
    if flags.canary is not None or flags.waves is not None:
        return [_staged(interleaved(changes, policies), flags.canary, flags.waves)]
    own: defaultdict[str, list[Change]] = defaultdict(list)
    rest: list[Change] = []
    for change in changes:
        spec = policies.get(change.manifest or "", DEFAULT_POLICY).rollout
        (own[change.manifest or ""] if is_staged(spec) else rest).append(change)
    groups = [
        _staged(own[name], policies[name].rollout.canary, policies[name].rollout.waves)
        for name in sorted(own, key=lambda n: (-policies[n].priority, n))
    ]
    if rest:
        groups.append(_Group((), (tuple(rest),)))
    return groups


def level_steps(
    changes: Sequence[Change], policies: Mapping[str, ManifestPolicy], flags: RolloutSpec
) -> list[Step]:
    """The steps of one level: the canaries first, then wave by wave."""
    groups = _groups(changes, policies, flags)
    steps: list[Step] = []
    canaries = [change for group in groups for change in group.canary]
    if canaries:
        steps.append(Step(tuple(by_priority(canaries, policies)), "canary", canary=True))
    count = max((len(group.waves) for group in groups), default=0)
    for index in range(count):
        wave = [c for group in groups if index < len(group.waves) for c in group.waves[index]]
        label = "all" if count == 1 and not canaries else f"wave {index + 1}/{count}"
        steps.append(Step(tuple(by_priority(wave, policies)), label))
    return steps
