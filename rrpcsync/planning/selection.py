"""Which devices a command works on: `--target`, `--exclude` and `--selector`."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rrpcsync.manifests.selectors import Requirement, parse_selector


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices a command works on: key globs to include/exclude and label selectors."""

    targets: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    selectors: tuple[tuple[Requirement, ...], ...] = ()

    @classmethod
    def from_options(
        cls, targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
    ) -> Selection:
        return cls(tuple(targets), tuple(excludes), tuple(parse_selector(s) for s in selectors))

    @property
    def everything(self) -> bool:
        return not (self.targets or self.excludes or self.selectors)

    def matches(self, key: str, labels: Mapping[str, str]) -> bool:
        if self.everything:
            return True
        if not self.matches_key(key):
            return False
        return all(all(req.matches(labels) for req in sel) for sel in self.selectors)

    def matches_key(self, key: str) -> bool:
        if self.targets and not any(fnmatch.fnmatchcase(key, glob) for glob in self.targets):
            return False
        return not any(fnmatch.fnmatchcase(key, glob) for glob in self.excludes)

    def matches_orphan(self, key: str) -> bool:
        # Orphans have no labels any more: a label selector never selects them.
        return not self.selectors and self.matches_key(key)
