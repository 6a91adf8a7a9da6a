"""One exception hierarchy; `cli.run_guarded` is the one place that maps it to exit codes."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes: a contract with CI scripts (DESIGN.md §5)."""

    OK = 0
    ERROR = 1
    CHANGES = 2  # only `plan --detailed-exitcode`
    PARTIAL = 3  # apply finished, some devices failed
    LOCKED = 4
    INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in one input file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    path: str  # JSON path inside the document, "$" for the document itself
    message: str

    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class RrpcsyncError(Exception):
    """An expected failure; its message tells the user what to do. Printed as one line."""

    exit_code: ExitCode = ExitCode.ERROR


class UsageError(RrpcsyncError):
    """The command line asks for something that cannot be done."""


class ManifestError(RrpcsyncError):
    """The manifests are invalid; every problem found is in `diagnostics`."""

    def __init__(self, diagnostics: Sequence[Diagnostic], summary: str = "") -> None:
        self.diagnostics = list(diagnostics)
        self.summary = summary
        first = self.diagnostics[0] if self.diagnostics else None
        text = f"{first.location()}: {first.message}" if first else "invalid manifests"
        super().__init__(f"{len(self.diagnostics)} error(s) in manifests; first: {text}")


class StateError(RrpcsyncError):
    """The state file (or its journal/backup) cannot be used as it is; it was not changed."""


class LockedError(RrpcsyncError):
    """Another run holds the state lock."""

    exit_code = ExitCode.LOCKED


class PlanFileError(RrpcsyncError):
    """A saved plan cannot be applied to this state."""


class ConfigError(RrpcsyncError):
    """Settings (token, endpoint, options) are missing or unsafe."""


class FatalApiError(RrpcsyncError):
    """The cloud refused the whole run (invalid token, unauthorized): nothing more can be sent."""


class Interrupted(RrpcsyncError):
    """The run was interrupted by a signal; the state was saved."""

    exit_code = ExitCode.INTERRUPTED
