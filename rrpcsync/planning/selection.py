"""Which devices a command works on: `--target`, `--exclude`, `--selector`, `--only-failed`,
and the record filters of `state list`."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from rrpcsync.manifests.selectors import Requirement, parse_selector
from rrpcsync.model import DeviceRecord, Status


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices a command works on: key globs to include/exclude and label selectors."""

    targets: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    selectors: tuple[tuple[Requirement, ...], ...] = ()
    keys: frozenset[str] | None = None  # only these devices (`--only-failed`); None: any

    @classmethod
    def from_options(
        cls, targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
    ) -> Selection:
        return cls(tuple(targets), tuple(excludes), tuple(parse_selector(s) for s in selectors))

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
