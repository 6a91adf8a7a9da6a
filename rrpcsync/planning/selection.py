"""Which devices a command works on: `--target`, `--exclude`, `--selector`, `--only-failed`,
and the record filters of `state list`."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from rrpcsync.manifests.selectors import Requirement, parse_selector
from rrpcsync.model import DesiredDevice, DeviceRecord, Status

SUGGESTION_POOL = 20_000  # keys compared for a did-you-mean (difflib is quadratic-ish)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices a command works on: key globs to include/exclude and label selectors."""

    targets: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    selectors: tuple[tuple[Requirement, ...], ...] = ()
    keys: frozenset[str] | None = None  # only these devices (`--only-failed`); None: any
    selector_texts: tuple[str, ...] = ()  # the --selector values as given, for messages

    @classmethod
    def from_options(
        cls, targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
    ) -> Selection:
        parsed = tuple(parse_selector(s) for s in selectors)
        return cls(tuple(targets), tuple(excludes), parsed, selector_texts=tuple(selectors))

    @property
    def everything(self) -> bool:
        return not (self.targets or self.excludes or self.selectors) and self.keys is None

    def only(self, keys: Iterable[str]) -> Selection:
        """This selection narrowed to `keys` as well."""
        narrowed = frozenset(keys)
        return replace(self, keys=narrowed if self.keys is None else self.keys & narrowed)

    def matches(self, key: str, labels: Mapping[str, str]) -> bool:
        if self.everything:
            return True
        if not self.matches_key(key):
            return False
        return all(all(req.matches(labels) for req in sel) for sel in self.selectors)

    def matches_key(self, key: str) -> bool:
        if self.keys is not None and key not in self.keys:
            return False
        if self.targets and not any(fnmatch.fnmatchcase(key, glob) for glob in self.targets):
            return False
        return not any(fnmatch.fnmatchcase(key, glob) for glob in self.excludes)

    def matches_orphan(self, key: str) -> bool:
        # Orphans have no labels any more: a label selector never selects them.
        return not self.selectors and self.matches_key(key)


def failed_keys(records: Mapping[str, DeviceRecord]) -> list[str]:
    """The devices whose last attempt failed (`--only-failed`)."""
    return [key for key, record in records.items() if record.status is Status.FAILED]


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """`state list`'s filters; each given one must hold (globs for manifest and error code)."""

    statuses: frozenset[str] = frozenset()
    manifests: tuple[str, ...] = ()
    error_codes: tuple[str, ...] = ()
    selection: Selection = Selection()

    def matches(self, key: str, record: DeviceRecord, labels: Mapping[str, str] | None) -> bool:
        """`labels` are the device's in the manifests; None when it is no longer declared."""
        if self.statuses and record.status.value not in self.statuses:
            return False
        if self.manifests and not _any_glob(record.manifest or "", self.manifests):
            return False
        code = record.last_error.code if record.last_error else ""
        if self.error_codes and not (code and _any_glob(code, self.error_codes)):
            return False
        if labels is None:
            return self.selection.matches_orphan(key)
        return self.selection.matches(key, labels)


def _any_glob(text: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, glob) for glob in globs)


# --------------------------------------------------------------------------- typos


def unmatched(
    selection: Selection, desired: Sequence[DesiredDevice], recorded: Iterable[str] = ()
) -> list[str]:
    """One message per --target/--exclude pattern and --selector that selects no device.

    A key pattern may also match a recorded device that is no longer declared (an orphan, for
    `--prune`). In CI a typo must fail the run, not pass green with nothing selected.
    """
    if selection.everything:
        return []
    keys = [device.key for device in desired]
    declared = set(keys)
    known = [*keys, *(key for key in recorded if key not in declared)]
    problems = []
    for option, patterns in (("--target", selection.targets), ("--exclude", selection.excludes)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(key, pattern) for key in known):
                problems.append(_with_hint(f"{option} {pattern!r}", _key_hint(pattern, known)))
    texts = selection.selector_texts or tuple(str(s) for s in selection.selectors)
    for text, requirements in zip(texts, selection.selectors, strict=False):
        if not any(all(r.matches(d.labels) for r in requirements) for d in desired):
            problems.append(_with_hint(f"--selector {text!r}", _label_hint(requirements, desired)))
    return problems


def _with_hint(what: str, hint: str | None) -> str:
    text = f"{what} matches no declared device"
    return f"{text}; did you mean {hint}?" if hint else text


def _key_hint(pattern: str, keys: Sequence[str]) -> str | None:
    """The product ID, else the key, closest to a pattern that matched nothing."""
    product, _, device = pattern.partition("/")
    products = sorted({key.partition("/")[0] for key in keys})
    if not any(fnmatch.fnmatchcase(name, product) for name in products):
        close = difflib.get_close_matches(product, products, n=1)
        if close:
            return close[0] if not device else f"{close[0]}/{device}"
    pool = [key for key in keys if fnmatch.fnmatchcase(key.partition("/")[0], product)] or keys
    close = difflib.get_close_matches(pattern, pool[:SUGGESTION_POOL], n=1)
    return close[0] if close else None


def _label_hint(
    requirements: Sequence[Requirement], desired: Sequence[DesiredDevice]
) -> str | None:
    """A requirement with a near-miss label key or value: `site=shanghai` for `site=shanghia`."""
    values: dict[str, set[str]] = {}
    for device in desired:
        for key, value in device.labels.items():
            values.setdefault(key, set()).add(value)
    for req in requirements:
        if req.op in ("notin", "!exists"):
            continue
        if req.key not in values:
            close = difflib.get_close_matches(req.key, sorted(values), n=1)
            if close:
                return _requirement_text(req, close[0], sorted(req.values))
            continue
        missing = sorted(v for v in req.values if v not in values[req.key])
        if req.op == "in" and missing and len(req.values) == len(missing):
            close = difflib.get_close_matches(missing[0], sorted(values[req.key]), n=1)
            if close:
                return _requirement_text(req, req.key, [close[0]])
    return None


def _requirement_text(req: Requirement, key: str, values: Sequence[str]) -> str:
    if req.op == "exists":
        return key
    if len(values) == 1:
        return f"{key}={values[0]}"
    return f"{key} in ({','.join(values)})"
