"""The project config file `rrpcsync.toml`: defaults for the command-line options.

It is found in the working directory or its parents. Its values become click's `default_map`,
so precedence is click's one rule: a flag, then the option's environment variable, then the
config file (an `[env.NAME]` section over the top level), then the built-in default.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrpcsync.errors import ManifestError, UsageError
from rrpcsync.manifests.files import read_manifest_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

CONFIG_NAME = "rrpcsync.toml"
ENV_VAR = "RRPCSYNC_ENV"


# --------------------------------------------------------------------------- the settings

Check = Callable[[Any], str | None]  # a problem with the value, or None


def _is_number(value: Any) -> bool:
    """A finite number: TOML's `nan` and `inf` are refused, as on the command line."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _choice(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _strings(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return None
    return 'must be a list of non-empty strings, e.g. ["configs/"]'


def _integer(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if whole and value >= low and (high is None or value <= high):
            return None
        top = f" and at most {high}" if high is not None else ""
        return f"must be a whole number of at least {low}{top}"

    return check


def _number(low: float, high: float | None = None, above: bool = False) -> Check:
    def check(value: Any) -> str | None:
        low_ok = _is_number(value) and (value > low if above else value >= low)
        if low_ok and (high is None or value <= high):
            return None
        bound = f"more than {low:g}" if above else f"at least {low:g}"
        top = f" and at most {high:g}" if high is not None else ""
        return f"must be a number {bound}{top}"

    return check


def _rate(value: Any) -> str | None:
    if value == "auto" or (_is_number(value) and value >= 0.01):
        return None
    return 'must be a number of requests per second (at least 0.01) or "auto"'


def _send_limit(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value):
        return None
    return 'must be a whole number of devices or a percentage such as "5%"'


def _waves(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    if isinstance(value, list) and value and all(_wave_item(v) for v in value):
        return None
    return 'must be a list of counts or percentages, e.g. [1, "10%", "50%"]'


def _wave_item(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of the config file and the option (click parameter name) it sets."""

    key: str  # as written in the file: "rate", "rollout.canary"
    param: str  # click parameter name: "rate", "state_path"
    check: Check
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("paths", "paths", _strings, "manifest files and folders (default configs/)"),
    Setting("exclude", "exclude_files", _strings, "globs of YAML files that are not manifests"),
    Setting("state", "state_path", _string, "the state (--state)"),
    Setting("site", "site", _choice("china", "overseas"), "the cloud (--site)"),
    Setting("endpoint", "endpoint", _string, "the API endpoint (--endpoint)"),
    Setting("rate", "rate", _rate, "requests per second at most, or auto (--rate)"),
    Setting("parallelism", "parallelism", _integer(1, 1000), "requests in flight (--parallelism)"),
    Setting("timeout", "timeout", _number(0.1), "seconds per request (--timeout)"),
    Setting("retries", "retries", _integer(0, 20), "retries of transient errors (--retries)"),
    Setting("max-sends", "max_sends", _send_limit, "most devices one apply may send to"),
    Setting("rollout.canary", "canary", _integer(0), "canary devices (--canary)"),
    Setting("rollout.waves", "waves", _waves, "cumulative wave sizes (--waves)"),
    Setting("rollout.max-failures", "max_failures", _integer(0), "--max-failures"),
    Setting("rollout.max-failure-rate", "max_failure_rate", _number(0, 100), "--max-failure-rate"),
    Setting("rollout.min-sample", "min_sample", _integer(1), "--min-sample"),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}
TABLES = {"rollout"}  # keys that are tables of settings


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class Value:
    value: Any
    line: int
    section: str  # "" for the top level, "env.prod" for an [env.prod] section


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A parsed, checked config file, with the `[env.NAME]` chosen (if any) applied."""

    path: Path | None
    env: str | None = None
    values: Mapping[str, Value] = field(default_factory=dict)  # setting key → value
    envs: tuple[str, ...] = ()

    def where(self, key: str) -> str:
        found = self.values[key]
        section = f" [{found.section}]" if found.section else ""
        return f"{self.path}:{found.line}{section}"


def find_config(start: Path) -> Path | None:
    """`rrpcsync.toml` in `start` or the nearest parent that has one."""
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None, env: str | None) -> ConfigFile:
    """Parse and check `path`; `env` selects an `[env.NAME]` section. UsageError with
    file:line for a syntax error, an unknown key, a wrong type or an unknown env."""
    if path is None:
        if env:
            raise UsageError(f"--env {env} (or {ENV_VAR}) needs a {CONFIG_NAME}; none was found")
        return ConfigFile(None)
    text = _read(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(_syntax_message(path, exc)) from None
    lines = key_lines(text)
    top = _checked(path, doc, (), lines)
    envs = doc.get("env", {})
    if not isinstance(envs, dict) or not all(isinstance(v, dict) for v in envs.values()):
        where = lines.get(("env",), 1)
        raise UsageError(f"{path}:{where}: env: must hold [env.NAME] sections")
    sections = {name: _checked(path, body, ("env", name), lines) for name, body in envs.items()}
    values = dict(top)
    if env:
        if env not in sections:
            known = ", ".join(sorted(sections)) or "none"
            raise UsageError(f"{path}: no [env.{env}] section (sections: {known})")
        values.update(sections[env])
    return ConfigFile(path, env or None, _relative_paths(path, values), tuple(sorted(sections)))


def _read(path: Path) -> str:
    try:  # a regular file of bounded size (a FIFO named rrpcsync.toml must not hang)
        return read_manifest_file(path).decode("utf-8")
    except ManifestError as exc:
        raise UsageError(f"{path}: cannot read: {exc.diagnostics[0].message}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None


def _syntax_message(path: Path, exc: Exception) -> str:
    """tomllib says `… (at line 3, column 7)`: put the place first, as everywhere else."""
    text = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
    if match is None:
        end = re.search(r"\s*\(at end of document\)$", text)
        if end is not None:
            last = len(_read(path).splitlines()) or 1
            return f"{path}:{last}: invalid TOML: {text[: end.start()]} at the end of the file"
        return f"{path}: invalid TOML: {text}"
    reason = text[: match.start()]
    return f"{path}:{match[1]}:{match[2]}: invalid TOML: {reason}"


def _checked(
    path: Path, doc: Mapping[str, Any], section: tuple[str, ...], lines: Mapping[Any, int]
) -> dict[str, Value]:
    values: dict[str, Value] = {}
    label = ".".join(section)
    for key, value in _flatten(doc, section == ()):
        line = lines.get((*section, *key.split(".")), lines.get(section, 1))
        setting = BY_KEY.get(key)
        if setting is None:
            raise UsageError(f"{path}:{line}: unknown setting {_qualified(label, key)}{_hint(key)}")
        problem = setting.check(value)
        if problem is not None:
            raise UsageError(f"{path}:{line}: {_qualified(label, key)} {problem}")
        values[key] = Value(value, line, label)
    return values


def _qualified(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def _flatten(doc: Mapping[str, Any], top: bool) -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        if top and key == "env":
            continue
        if key in TABLES and isinstance(value, dict):
            for inner, inner_value in value.items():
                yield f"{key}.{inner}", inner_value
        else:
            yield key, value


def _hint(key: str) -> str:
    import difflib

    known = [s.key for s in SETTINGS] + [s.key.split(".")[-1] for s in SETTINGS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    names = ", ".join(s.key for s in SETTINGS)
    return f"; did you mean '{close[0]}'?" if close else f" (known: {names})"


def _relative_paths(path: Path, values: dict[str, Value]) -> dict[str, Value]:
    """`paths` and `state` are relative to the config file's folder, as written there."""
    base = path.parent

    def moved(text: str) -> str:
        if os.path.isabs(text) or "://" in text:
            return text
        return os.path.relpath(base / text)

    for key in ("paths", "state"):
        if key in values:
            old = values[key]
            new = [moved(p) for p in old.value] if key == "paths" else moved(old.value)
            values[key] = Value(new, old.line, old.section)
    return values


# --------------------------------------------------------------------------- key lines

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of every table header and key (`("env", "prod", "rate")` → 7); tomllib gives
    values without places. Lines inside multi-line arrays and strings are skipped."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth, in_string = 0, False
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string or depth > 0:
            depth, in_string = _scan(line, depth, in_string)
            continue
        if header := _HEADER.match(line):
            table = _dotted(header[1])
            found.setdefault(table, number)
            continue
        if key := _KEY.match(line):
            found.setdefault((*table, *_dotted(key[1])), number)
            depth, in_string = _scan(line[key.end() :], 0, False)
    return found


def _dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""\s*("[^"]*"|'[^']*'|[^.\s]+)\s*(?:\.|$)""", text)
    return tuple(part.strip("\"'") for part in parts)


def _scan(text: str, depth: int, in_string: bool) -> tuple[int, bool]:
    """Bracket depth and whether a multi-line string is open at the end of `text`."""
    index = 0
    while index < len(text):
        if in_string:
            end = text.find('"""', index)
            if end < 0:
                return depth, True
            in_string, index = False, end + 3
            continue
        char = text[index]
        if text.startswith('"""', index):
            in_string, index = True, index + 3
            continue
        if char in "\"'":
            end = text.find(char, index + 1)
            index = len(text) if end < 0 else end + 1
            continue
        if char == "#":
            break
        depth += {"[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
        index += 1
    return depth, in_string


# --------------------------------------------------------------------------- click defaults


def option_value(setting: Setting, value: Any) -> Any:
    """A config value as the option's default: waves as the flag's text `1,10%`."""
    if setting.key == "rollout.waves" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def default_map(config: ConfigFile, command: Any) -> dict[str, Any]:
    """click's `default_map` for `command` (a group) and every command under it: each
    parameter named like a setting gets the config file's value."""
    by_param = {
        BY_KEY[key].param: option_value(BY_KEY[key], found.value)
        for key, found in config.values.items()
    }
    return _command_defaults(command, by_param)


def _command_defaults(command: Any, by_param: Mapping[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        param.name: by_param[param.name]
        for param in getattr(command, "params", ())
        if param.name in by_param
    }
    for name, sub in getattr(command, "commands", {}).items():
        defaults[name] = _command_defaults(sub, by_param)
    return defaults
