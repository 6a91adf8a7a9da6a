"""Label-selector overrides (`spec.overrides`): payload layers shared by groups of devices.

    overrides:
      - selector: site=shanghai,floor in (3,4)
        payload: {params: {interval: 10}}

A device's payload is built in layers, each deep-merged over the one before (`merge`):
`spec.payload`, then every override whose selector matches the device's labels, in the order
listed, then the device's own `payload`. Matching is decided once per distinct combination of
the labels the selectors mention, and each combination's merged base once per manifest, so a
100,000-device inventory costs one dict lookup per device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from rrpcsync.errors import UsageError
from rrpcsync.manifests.selectors import Requirement, parse_selector

Report = Callable[[tuple[Any, ...], str], None]
NO_MATCH: tuple[int, ...] = ()


def merge(base: Any, override: Any) -> Any:
    """Deep merge: mappings merge key by key, `None` deletes a key, anything else replaces.

    `None` deletes at every depth, also inside a mapping the base does not have (or has as
    a scalar): the override's nulls are never sent.
    """
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            merged[key] = merge(current if isinstance(current, dict) else {}, value)
        else:
            merged[key] = value
    return merged


class Override(NamedTuple):
    position: int  # index in spec.overrides
    selector: str  # as written
    requirements: tuple[Requirement, ...]
    payload: Any
    file: str
    line: int
    column: int

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def label(self) -> str:
        return f"overrides[{self.position}] ({self.selector})"


def parse_overrides(
    raw: Sequence[Mapping[str, Any]] | None,
    file: str,
    marks: Sequence[tuple[int, int]],
    report: Report,
) -> tuple[Override, ...]:
    """`spec.overrides` (shape checked by the schema); a bad selector is reported at its line.

    `marks`: the (line, column) of each list item.
    """
    parsed: list[Override] = []
    for index, item in enumerate(raw or ()):
        path = ("spec", "overrides", index, "selector")
        requirements = _requirements(item["selector"], path, report)
        if requirements is not None:
            line, column = marks[index] if index < len(marks) else (1, 1)
            parsed.append(
                Override(index, item["selector"], requirements, item["payload"], file, line, column)
            )
    return tuple(parsed)


def _requirements(
    text: str, path: tuple[Any, ...], report: Report
) -> tuple[Requirement, ...] | None:
    try:
        requirements = parse_selector(text)
    except UsageError:
        report(
            path,
            f"invalid selector {text!r}: "
            "expected k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k (comma: and)",
        )
        return None
    if not requirements:
        report(path, "empty selector: it would match every device (use spec.payload instead)")
        return None
    return requirements


class Layering:
    """The overrides of one manifest: which match a device, and the base payload they build."""

    __slots__ = ("_bases", "_default", "_keys", "_matches", "_sources", "overrides", "used")

    def __init__(self, default: Any, overrides: tuple[Override, ...]) -> None:
        self.overrides = overrides
        self.used: set[int] = set()  # positions (in `overrides`) that matched some device
        self._default = default
        self._keys = tuple(sorted({r.key for o in overrides for r in o.requirements}))
        self._matches: dict[tuple[str | None, ...], tuple[int, ...]] = {}
        self._bases: dict[tuple[int, ...], Any] = {NO_MATCH: default}
        self._sources: dict[tuple[int, ...], tuple[str, ...]] = {NO_MATCH: ()}

    def __bool__(self) -> bool:
        return bool(self.overrides)

    def matching(self, labels: Mapping[str, str]) -> tuple[int, ...]:
        """Positions of the overrides that match, in order (labels are strings: None = absent)."""
        signature = tuple(map(labels.get, self._keys))
        found = self._matches.get(signature)
        if found is None:
            found = tuple(i for i, o in enumerate(self.overrides) if o.matches(labels))
            self._matches[signature] = found
            self.used.update(found)
        return found

    def base(self, matched: tuple[int, ...]) -> Any:
        """`spec.payload` with the matched overrides merged over it, in order."""
        base = self._bases.get(matched)
        if base is None and matched not in self._bases:
            base = self._default
            for position in matched:
                base = merge(base, self.overrides[position].payload)
            self._bases[matched] = base
        return base

    def sources(self, matched: tuple[int, ...]) -> tuple[str, ...]:
        """ "file:line" of each matched override (one shared tuple per combination)."""
        found = self._sources.get(matched)
        if found is None:
            found = tuple(self.overrides[position].source for position in matched)
            self._sources[matched] = found
        return found

    def unused(self) -> Iterator[Override]:
        return (o for i, o in enumerate(self.overrides) if i not in self.used)


# --------------------------------------------------------------------------- explain


class Layer(NamedTuple):
    name: str  # "spec.payload", "overrides[1] (floor=3)", "device"
    source: str  # "file:line"
    payload: Any  # what this layer contributes (None: nothing)


class Attribution(NamedTuple):
    path: str  # dotted path of a leaf in the final payload ("" for the whole payload)
    value: Any
    layer: Layer  # the layer that set it last


def attribute(layers: Sequence[Layer]) -> tuple[Any, list[Attribution]]:
    """The merged payload and, for each of its leaves, the layer that produced the value."""
    result: Any = None
    origin: dict[tuple[str, ...], Layer] = {}
    for layer in layers:
        if layer.payload is None:
            continue
        result = (
            merge(result, layer.payload) if result is not None else _without_nulls(layer.payload)
        )
        _record(origin, (), layer.payload, layer)
    return result, [
        Attribution(".".join(path), value, _origin_of(origin, path))
        for path, value in _leaves(result, ())
    ]


def _without_nulls(payload: Any) -> Any:
    return merge({}, payload) if isinstance(payload, dict) else payload


def _record(
    origin: dict[tuple[str, ...], Layer], path: tuple[str, ...], value: Any, layer: Layer
) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _record(origin, (*path, str(key)), item, layer)
    else:
        for known in [p for p in origin if p[: len(path)] == path]:
            del origin[known]  # a list or scalar replaces everything below it
        origin[path] = layer


def _origin_of(origin: Mapping[tuple[str, ...], Layer], path: tuple[str, ...]) -> Layer:
    for depth in range(len(path), -1, -1):
        found = origin.get(path[:depth])
        if found is not None:
            return found
    raise KeyError(path)


def _leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict) and value:
        for key in sorted(value, key=str):
            yield from _leaves(value[key], (*path, str(key)))
    else:
        yield path, value
