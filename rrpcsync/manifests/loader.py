"""Load manifests (YAML) into desired devices, each remembering the file and line it came from.

The hot path is one libyaml parse per file: nodes are composed in C, constructed in Python,
and line numbers are read from the node tree of the document being processed (no second
parse). A compiled validator checks the happy path; jsonschema explains the failures.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rrpcsync import secrets
from rrpcsync.errors import Diagnostic, ManifestError
from rrpcsync.jsontext import MAX_DEPTH, canonical_payload, gc_paused, nested_deeper_than
from rrpcsync.manifests import inventory, messages
from rrpcsync.manifests import probe as probes
from rrpcsync.manifests.expect import ManifestExpectations, check_echo_payload, parse_expectation
from rrpcsync.manifests.files import input_file_problem, read_manifest_file
from rrpcsync.manifests.overrides import NO_MATCH, Layering, merge, parse_overrides
from rrpcsync.manifests.policy import DEFAULT_POLICY, dependency_problems, parse_policy
from rrpcsync.model import EMPTY_LABELS, DesiredDevice, Expectation, ManifestPolicy

T = TypeVar("T")
__all__ = ["merge"]  # re-exported: the deep merge lives with the other layers (overrides.py)

# A device to expand: (name, productId or None, labels, own payload, expect, file, line,
# column, path of its list in the document, index in that list, reporter for that document).
# A plain tuple: 100,000 of them pass through the loop.
Entry = tuple[
    str,
    "str | None",
    "Mapping[str, str]",
    Any,
    "Expectation | None",
    str,
    int,
    int,
    tuple[Any, ...],
    int,
    "Report",
]
Report = Callable[[tuple[Any, ...], str], None]

API_VERSION = "rrpcsync/v1"
MAX_PAYLOAD_BYTES = 65_536  # MQTT message limit (InvalidParameterValue.PayloadOverLimit)
MAX_EXPANDED_NODES = 1_000_000  # alias ("billion laughs") budget per document
MAX_NESTING = 1_000  # nested collections; a payload this deep cannot be sent as JSON anyway
MANIFEST_SUFFIXES = (".yaml", ".yml")

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LIBYAML = _BaseLoader is not yaml.SafeLoader


class _ManifestLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2-like scalars (no timestamps, true/false only), no duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        pairs = node.value
        pairs_before = len(pairs)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        # flatten_mapping (merge keys "<<") deletes them from node.value and puts the merged
        # pairs in a new list; a key given both ways is legal there, not a duplicate.
        merged = node.value is not pairs or len(node.value) != pairs_before
        if len(mapping) != pairs_before and not merged:
            # reported with the document's other problems (one pass), not raised
            self.duplicates.append(_duplicate_key(node))
        return mapping

    @property
    def duplicates(self) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] | None = self.__dict__.get("_duplicates")
        if found is None:
            found = self.__dict__["_duplicates"] = []
        return found


def _duplicate_key(node: MappingNode) -> tuple[int, int, str]:
    """(line, column, message) of a mapping's first repeated key."""
    seen: dict[Any, Node] = {}
    for key_node, _ in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else id(key_node)
        if key in seen:
            first = seen[key].start_mark.line + 1
            mark = key_node.start_mark
            return (
                mark.line + 1,
                mark.column + 1,
                (f"duplicate key '{key}' (first at line {first}); a mapping holds each key once"),
            )
        seen[key] = key_node
    # Different text, same value: 1, 0x1, 1.0 and true are one Python key (the last would win).
    mark = node.start_mark
    return (
        mark.line + 1,
        mark.column + 1,
        ("keys that are the same value (such as 1, 1.0 and true); quote them"),
    )


def _yaml12_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = [
            (tag, regexp)
            for tag, regexp in entries
            if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
        ]
        if kept:
            resolvers[first] = kept
    bool_re = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
    for first in "tTfF":
        resolvers.setdefault(first, []).append(("tag:yaml.org,2002:bool", bool_re))
    return resolvers


_ManifestLoader.yaml_implicit_resolvers = _yaml12_resolvers()
_ManifestLoader.add_constructor(
    "tag:yaml.org,2002:bool",
    lambda loader, node: node.value.lower() == "true",
)


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    try:
        return int(yaml.constructor.SafeConstructor.construct_yaml_int(loader, node))
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise yaml.constructor.ConstructorError(
            None, None, f"the integer {node.value[:12]}… has too many digits", node.start_mark
        ) from None


_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


# --------------------------------------------------------------------------- schema


SCHEMA_FILE = Path(__file__).with_name("schema") / "manifest.schema.json"


@cache
def schema_text() -> str:
    # a plain file next to this module (the wheel installs files); importlib.resources would
    # import tempfile, shutil and zipfile, a fifth of a one-file `validate`
    return SCHEMA_FILE.read_text("utf-8")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


def _schema_of(definition: str | None) -> dict[str, Any]:
    """The manifest schema, or one of its `$defs` (e.g. "devices": an inventory list)."""
    if definition is None:
        return schema()
    full = schema()
    return {"$id": full["$id"], "$defs": full["$defs"], "$ref": f"#/$defs/{definition}"}


@cache
def _fast_validator(definition: str | None = None) -> tuple[Callable[[Any], Any], type[Exception]]:
    """The validator compiled ahead of time (scripts/compile_schema.py), or compiled now if
    the schema changed since or for one of its `$defs` (an inventory list); and the exception
    it raises."""
    if definition is None:
        from rrpcsync.manifests.schema import compiled

        if sha256_text(schema_text()) == compiled.SCHEMA_SHA256:
            shipped: Callable[[Any], Any] = compiled.validate
            return shipped, compiled.JsonSchemaValueException
    import fastjsonschema

    return fastjsonschema.compile(_schema_of(definition)), fastjsonschema.JsonSchemaException


@cache
def _full_validator(definition: str | None = None) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema_of(definition))


def _is_valid_fast(document: Any, definition: str | None = None) -> bool:
    validate, invalid = _fast_validator(definition)
    try:
        validate(document)
    except invalid:
        return False
    return True


# --------------------------------------------------------------------------- payloads


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    name: str
    file: str
    line: int
    product_id: str
    devices: int
    policy: ManifestPolicy = DEFAULT_POLICY  # spec.priority, dependsOn, rollout
    dependency_marks: tuple[tuple[int, int], ...] = ()  # (line, column) of each dependsOn


@dataclass(slots=True)
class LoadResult:
    devices: list[DesiredDevice] = field(default_factory=list)
    manifests: list[ManifestInfo] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: int = 0
    warnings: list[Diagnostic] = field(default_factory=list)  # e.g. an override matching nothing
    # (name, file, line) of every document's metadata.name, valid or not: duplicate names are
    # reported with the schema errors, in one pass
    names: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.diagnostics

    def extend(self, other: LoadResult) -> None:
        self.devices.extend(other.devices)
        self.manifests.extend(other.manifests)
        self.diagnostics.extend(other.diagnostics)
        self.files += other.files
        self.warnings.extend(other.warnings)
        self.names.extend(other.names)


# --------------------------------------------------------------------------- discovery


EXCLUDE_PREFIX = "!"  # a paths entry `!GLOB` leaves matching files out of folder walks


def discover(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Diagnostic]]:
    """Manifest files under `paths`, sorted and de-duplicated; missing paths are diagnostics.

    An entry `!GLOB` (the config file's `exclude`) leaves out the files found in folders whose
    path, or any trailing part of it, matches GLOB (`k8s/*`, `*.ci.yml`); a file named
    explicitly is always read."""
    excludes = [str(p)[1:] for p in paths if str(p).startswith(EXCLUDE_PREFIX)]
    files: list[Path] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        if str(raw).startswith(EXCLUDE_PREFIX):
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(f for f in _walk(path) if not _excluded(f, excludes))
            if not found:
                problems.append(_path_problem(path, "folder holds no *.yaml or *.yml manifests"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif (problem := input_file_problem(path)) is not None:
            problems.append(problem)
        else:
            problems.append(_path_problem(path, "no such file or folder"))
    return list(dict.fromkeys(files)), problems


def _excluded(path: Path, globs: Sequence[str]) -> bool:
    parts = path.as_posix().split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(tail, glob) for glob in globs for tail in tails)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.endswith(MANIFEST_SUFFIXES) and not name.startswith("."):
                yield Path(root, name)


def _path_problem(path: Path, message: str) -> Diagnostic:
    return Diagnostic(str(path), 1, 1, "$", message)


# --------------------------------------------------------------------------- loading


PARALLEL_MIN_FILES = 64  # below this, starting workers costs more than it saves


def load_manifests(paths: Sequence[str | os.PathLike[str]], jobs: int | None = None) -> LoadResult:
    """Load, validate and expand every manifest under `paths`; collect every problem."""
    return load_manifests_while(paths, lambda: None, jobs)[0]


def load_manifests_while(
    paths: Sequence[str | os.PathLike[str]], during: Callable[[], T], jobs: int | None = None
) -> tuple[LoadResult, T]:
    """Load manifests, running `during()` (e.g. reading the state) while workers parse.

    Large trees are parsed by `jobs` worker processes (default: one per core); results are
    merged in file order, so output is the same whatever the number of workers.
    """
    with gc_paused():  # also while the workers' results are unpickled
        return _load_manifests_while(paths, during, jobs)


def _load_manifests_while(
    paths: Sequence[str | os.PathLike[str]], during: Callable[[], T], jobs: int | None
) -> tuple[LoadResult, T]:
    files, problems = discover(paths)
    result = LoadResult(diagnostics=problems)
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if jobs > 1 and len(files) >= PARALLEL_MIN_FILES:
        parts, side = _load_parallel(files, jobs, during)
        for part in parts:
            result.extend(part)
    else:
        side = during()
        result.extend(load_files(files))
    result.diagnostics.extend(cross_file_problems(result))
    if files and not result.manifests and not result.diagnostics:
        # e.g. only empty files: planning against nothing would orphan the whole fleet
        result.diagnostics.append(_path_problem(files[0], "no manifests found in any file"))
    secrets.remember([d.template for d in result.devices if d.template], os.environ)
    return result, side


def load_files(files: Sequence[Path]) -> LoadResult:
    result = LoadResult()
    with gc_paused():  # the workers' entry point too
        for path in files:
            result.extend(load_file(path))
    return result


def _load_parallel(
    files: Sequence[Path], jobs: int, during: Callable[[], T]
) -> tuple[list[LoadResult], T]:
    import multiprocessing
    import threading

    chunks = 4 * jobs  # a few chunks per worker even out uneven files
    size = -(-len(files) // chunks)
    parts = [files[i : i + size] for i in range(0, len(files), size)]
    # fork is cheapest, but forking a process that runs other threads can deadlock
    methods = multiprocessing.get_all_start_methods()
    single = threading.active_count() == 1
    method = "fork" if single and "fork" in methods else "spawn"
    with multiprocessing.get_context(method).Pool(jobs, initializer=_worker_signals) as pool:
        pending = pool.map_async(load_files, parts)
        side = during()
        return pending.get(), side


def _worker_signals() -> None:
    """Workers leave interruptions to the parent: a forked worker inherits the CLI's SIGTERM
    handler (which raises), so the parent's `Pool.terminate` (after an error in the state load,
    or a signal) would leave it alive, printing tracebacks, and `terminate` would wait forever.
    Ctrl-C reaches the whole process group; only the parent acts on it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_file(path: Path) -> LoadResult:
    """One file: its manifests, devices and the problems found in it alone."""
    name = str(path)
    result = LoadResult(files=1)
    text, problem = _read_text(path)
    if problem is not None:
        result.diagnostics.append(problem)
        return result
    for document, root in _documents(name, text, result.diagnostics):
        _load_document(name, document, root, result)
    if secrets.MARKER in text:
        _missing_secrets_once(name, text, result.diagnostics)
    return result


def _read_text(path: Path) -> tuple[str, Diagnostic | None]:
    try:
        data = read_manifest_file(path)
    except ManifestError as exc:
        return "", exc.diagnostics[0]
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        return "", Diagnostic(str(path), line, column, "$", message)


_ANCHOR = re.compile(r"&[^\s\[\]{},]")
# Text that might nest collections deeper than MAX_NESTING: 500+ columns of indentation, or
# 250+ compact block indicators on one line ("- - - - ..."); flow brackets are counted.
_DEEP_BLOCK = re.compile(r"^[ \t]{500}|(?:[-?:][ \t]+){250}", re.MULTILINE)


def _nesting_problem(file: str, text: str) -> Diagnostic | None:
    """Refuse collections nested more than MAX_NESTING levels deep.

    libyaml's composer recurses on the C stack: some 20,000 levels (a 40 KB file) crash the
    process. Text that cannot nest that deep passes the cheap checks; other text is measured
    on the event stream, which does not recurse.
    """
    if text.count("[") + text.count("{") < MAX_NESTING and _DEEP_BLOCK.search(text) is None:
        return None
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    mark = event.start_mark
                    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                    message = f"YAML: collections nested more than {MAX_NESTING:,} levels deep"
                    return Diagnostic(file, line, column, "$", message)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # reported with its position when the file is loaded
    return None


def _documents(file: str, text: str, problems: list[Diagnostic]) -> Iterator[tuple[Any, Node]]:
    """(constructed document, its node tree) for each non-empty document of a file."""
    nesting = _nesting_problem(file, text)
    if nesting is not None:
        problems.append(nesting)
        return
    loader = _ManifestLoader(text)
    check_aliases = _ANCHOR.search(text) is not None
    try:
        while loader.check_node():
            root = loader.get_node()
            if root is None:
                continue
            if check_aliases:
                problem = _alias_problem(file, root)
                if problem is not None:
                    problems.append(problem)
                    continue
            document = loader.construct_document(root)
            for line, column, message in loader.duplicates:
                problems.append(Diagnostic(file, line, column, "$", f"YAML: {message}"))
            loader.duplicates.clear()
            if document is not None:
                yield document, root
    except yaml.MarkedYAMLError as exc:
        problems.append(_yaml_problem(file, exc, text))
    except yaml.YAMLError as exc:  # errors without a mark
        problems.append(Diagnostic(file, 1, 1, "$", f"YAML error: {exc}"))
    finally:
        loader.dispose()


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError, text: str = "") -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    opened = exc.context_mark
    message = messages.yaml_syntax(
        text.splitlines(),
        exc.context,
        (opened.line + 1, opened.column + 1) if opened else None,
        exc.problem,
        (line, column),
    )
    if "could not determine a constructor" in message:
        message = f"{message} (only plain YAML is allowed: no custom or Python tags)"
    return Diagnostic(file, line, column, "$", f"YAML: {message}")


def _alias_problem(file: str, root: Node) -> Diagnostic | None:
    """Refuse documents whose aliases expand past the node budget or refer to themselves."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        if children_done:
            on_path.discard(ident)
            sizes[ident] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[ident] > MAX_EXPANDED_NODES:
                return _budget_problem(file, node)
            continue
        if ident in sizes:
            continue
        if ident in on_path:
            return Diagnostic(file, *_mark(node), "$", "YAML: recursive alias is not allowed")
        on_path.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return None


def _budget_problem(file: str, node: Node) -> Diagnostic:
    message = (
        f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} nodes "
        "(an alias bomb?); refusing to load this document"
    )
    return Diagnostic(file, *_mark(node), "$", message)


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# --------------------------------------------------------------------------- one document


def _load_document(file: str, document: Any, root: Node, result: LoadResult) -> None:
    _note_name(file, document, root, result)
    if not _is_valid_fast(document):
        result.diagnostics.extend(schema_problems(file, document, root))
        return
    spec = document["spec"]
    metadata = document["metadata"]
    name = metadata["name"]
    product_id = spec["productId"]
    labels = metadata.get("labels") or EMPTY_LABELS
    devices_before = len(result.devices)
    problems_before = len(result.diagnostics)
    report = _reporter(file, root, result.diagnostics)
    policy = parse_policy(spec, report)
    expectations = ManifestExpectations(spec.get("expect"), report)
    probe = probes.parse_probe(spec.get("probe"), report)
    override_marks = _item_marks(root, ("spec", "overrides"))
    layers = Layering(
        spec.get("payload"), parse_overrides(spec.get("overrides"), file, override_marks, report)
    )
    # the payload (text, sha256, template) of devices without their own, made once per set
    # of matching overrides (without overrides: once per manifest)
    shared: dict[tuple[int, ...], tuple[str, str, str | None]] = {}
    any_overrides = bool(layers.overrides)
    for entry in _entries(file, root, spec, labels, expectations, report, result.diagnostics):
        device_name, product, device_labels, own_payload, expect, where, line, column = entry[:8]
        matched = layers.matching(device_labels) if any_overrides else NO_MATCH
        if own_payload is None and matched in shared:
            text, digest, template = shared[matched]
        else:
            base = layers.base(matched)
            payload = base if own_payload is None else merge(base, own_payload)
            path = (*entry[8], entry[9])
            sources = layers.sources(matched)
            made = _payload_text(where, line, column, path, payload, result.diagnostics, sources)
            if made is None:
                last = result.diagnostics[-1]
                if where == file and not sources and last.message.startswith(_TOO_BIG):
                    result.diagnostics[-1] = _too_big_at(last, root, path, own_payload, base)
                continue
            (text, template), digest = made, sha256_text(made[0])
            if own_payload is None:
                shared[matched] = (text, digest, template)
        if expect is not None and not check_echo_payload(
            expect, text, (*entry[8], entry[9]), entry[10]
        ):
            continue
        device_product = product or product_id
        result.devices.append(
            DesiredDevice(
                key=f"{device_product}/{device_name}",
                product_id=device_product,
                device_name=device_name,
                manifest=name,
                payload=text,
                payload_sha256=digest,
                file=where,
                line=line,
                labels=device_labels,
                template=template,
                expect=expect,
                probe=probe,
                overrides=layers.sources(matched) if matched else (),
            )
        )
    line, _ = _mark(root)
    count = len(result.devices) - devices_before
    if count == 0 and len(result.diagnostics) == problems_before:
        report(("spec", "devicesFrom"), "no devices: the inventories list none")
    for unused in layers.unused():
        message = f"override selector {unused.selector!r} matches no device of this manifest"
        json_path = f"$.spec.overrides[{unused.position}].selector"
        result.warnings.append(Diagnostic(file, unused.line, unused.column, json_path, message))
    marks = _item_marks(root, ("spec", "dependsOn"))
    result.manifests.append(ManifestInfo(name, file, line, product_id, count, policy, marks))


def _entries(
    file: str,
    root: Node,
    spec: Mapping[str, Any],
    labels: Mapping[str, str],
    expectations: ManifestExpectations,
    report: Report,
    problems: list[Diagnostic],
) -> Iterator[Entry]:
    """The devices to expand: `spec.devices`, then each `spec.devicesFrom` inventory's;
    `labels` (the manifest's) under each device's own."""
    if "devices" in spec:
        nodes = _lookup(root, ("spec", "devices"))
        assert isinstance(nodes, SequenceNode)
        prefix = ("spec", "devices")
        yield from _list_entries(
            file, spec["devices"], nodes, prefix, labels, expectations.of, report
        )
    if "devicesFrom" in spec:
        references = spec["devicesFrom"]
        yield from _inventory_entries(file, references, labels, expectations, report, problems)


def _list_entries(
    file: str,
    items: Sequence[Any],
    nodes: SequenceNode,
    prefix: tuple[Any, ...],
    labels: Mapping[str, str],
    expect_of: Callable[[int, Any], Expectation | None],
    report: Report,
) -> Iterator[Entry]:
    for index, (item, node) in enumerate(zip(items, nodes.value, strict=True)):
        mark = node.start_mark
        if isinstance(item, str):
            yield (
                item,
                None,
                labels,
                None,
                expect_of(index, item),
                file,
                mark.line + 1,
                mark.column + 1,
                prefix,
                index,
                report,
            )
        else:
            yield (
                item["name"],
                None,
                {**labels, **item["labels"]} if "labels" in item else labels,
                item.get("payload"),
                expect_of(index, item),
                file,
                mark.line + 1,
                mark.column + 1,
                prefix,
                index,
                report,
            )


def _inventory_entries(
    file: str,
    references: list[str],
    labels: Mapping[str, str],
    expectations: ManifestExpectations,
    report: Report,
    problems: list[Diagnostic],
) -> Iterator[Entry]:
    files, missing = inventory.resolve(file, references)
    for index, message in missing:
        report(("spec", "devicesFrom", index), message)
    for source in files:
        try:
            text = inventory.read_text(source.path)
        except inventory.InventoryError as exc:
            problems.append(Diagnostic(source.path, exc.line, exc.column, "$", exc.message))
            continue
        if inventory.is_csv(source.path):
            yield from _csv_entries(source.path, text, labels, expectations.default, problems)
        else:
            yield from _yaml_inventory_entries(source.path, text, labels, expectations, problems)


def _csv_entries(
    path: str,
    text: str,
    labels: Mapping[str, str],
    expect: Expectation | None,
    problems: list[Diagnostic],
) -> Iterator[Entry]:
    def report(where: tuple[Any, ...], message: str) -> None:
        problems.append(Diagnostic(path, where[0], 1, "$", message))

    row_problems: list[inventory.CsvProblem] = []
    try:
        for row in inventory.read_csv(path, text, row_problems, labels):
            yield (
                row.name,
                row.product_id,
                row.labels,
                None,
                expect,
                path,
                row.line,
                1,
                (),
                row.line,
                report,
            )
    except inventory.InventoryError as exc:
        problems.append(Diagnostic(path, exc.line, exc.column, "$", exc.message))
    problems.extend(Diagnostic(path, p.line, p.column, "$", p.message) for p in row_problems)


def _yaml_inventory_entries(
    path: str,
    text: str,
    labels: Mapping[str, str],
    expectations: ManifestExpectations,
    problems: list[Diagnostic],
) -> Iterator[Entry]:
    """A YAML/JSON inventory: one list shaped like `spec.devices`."""
    problems_before = len(problems)
    documents = list(_documents(path, text, problems))
    if len(problems) > problems_before:
        return
    if not documents:
        problems.append(Diagnostic(path, 1, 1, "$", "inventory holds no device list"))
        return
    if len(documents) > 1:
        problems.append(
            Diagnostic(path, *_mark(documents[1][1]), "$", "inventory holds more than one document")
        )
        return
    items, root = documents[0]
    if not _is_valid_fast(items, "devices"):
        problems.extend(schema_problems(path, items, root, "devices"))
        return
    assert isinstance(root, SequenceNode)  # the schema checked that it is a list
    report = _reporter(path, root, problems)

    def expect_of(index: int, item: Any) -> Expectation | None:
        if isinstance(item, str) or "expect" not in item:
            return expectations.default
        raw = item["expect"]
        return None if raw is None else parse_expectation(raw, (index, "expect"), report)

    yield from _list_entries(path, items, root, (), labels, expect_of, report)


def _note_name(file: str, document: Any, root: Node, result: LoadResult) -> None:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(name, str):
        result.names.append((name, file, _mark(root)[0]))


def _reporter(file: str, root: Node, problems: list[Diagnostic]) -> Callable[..., None]:
    """`report(path, message)`: a diagnostic at the node of a path inside this document."""

    def report(path: tuple[Any, ...], message: str) -> None:
        node = _lookup(root, path, at_key=True)
        line, column = _mark(node if node is not None else root)
        problems.append(Diagnostic(file, line, column, _json_path(path), message))

    return report


def _item_marks(root: Node, path: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    node = _lookup(root, path)
    return tuple(_mark(item) for item in node.value) if isinstance(node, SequenceNode) else ()


def _payload_text(
    file: str,
    line: int,
    column: int,
    where: tuple[Any, ...],
    payload: Any,
    problems: list[Diagnostic],
    overrides: tuple[str, ...] = (),
) -> tuple[str, str | None] | None:
    """(payload to send, its `${env:…}` template or None), or None after a diagnostic."""
    path = _json_path(where)
    built = f" (with the overrides at {', '.join(overrides)})" if overrides else ""
    if payload is None:
        message = "device has no payload: set spec.payload or the device's own payload"
        problems.append(Diagnostic(file, line, column, path, message))
        return None
    try:
        text = canonical_payload(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"payload cannot be sent as JSON: {_json_reason(exc)}{built}"
        problems.append(Diagnostic(file, line, column, path + ".payload", message))
        return None
    if not isinstance(payload, str) and nested_deeper_than(payload, MAX_DEPTH):
        message = f"payload is nested too deeply (more than {MAX_DEPTH} levels of lists and maps)"
        problems.append(Diagnostic(file, line, column, path + ".payload", message))
        return None
    template = None
    if secrets.is_template(text):
        template = text
        try:
            text = secrets.resolve(template, not isinstance(payload, str), os.environ)
        except secrets.MissingVariable as missing:
            message = (
                f"{MISSING_SECRET}{missing.name} is not set (referenced as ${{env:{missing.name}}})"
            )
            problems.append(Diagnostic(file, line, column, path + ".payload", message))
            # the rest is checked as if it were set: `validate` needs no secret value
            text = secrets.mask(template)
    size = len(text.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        message = (
            f"payload is {size:,} bytes, over the {MAX_PAYLOAD_BYTES:,}-byte MQTT limit{built}"
        )
        problems.append(Diagnostic(file, line, column, path + ".payload", message))
        return None
    return text, template


_TOO_BIG = "payload is "
MISSING_SECRET = "environment variable "  # a `${env:NAME}` whose variable is not set


def is_missing_secret(diag: Diagnostic) -> bool:
    return diag.message.startswith(MISSING_SECRET) and "(referenced as ${env:" in diag.message


def _missing_secrets_once(file: str, text: str, problems: list[Diagnostic]) -> None:
    """Each missing variable once, at the line of its first `${env:NAME}` in the file."""
    seen: set[str] = set()
    kept: list[Diagnostic] = []
    for diag in problems:
        if not is_missing_secret(diag):
            kept.append(diag)
            continue
        name = diag.message[len(MISSING_SECRET) :].split(" ", 1)[0]
        if name in seen:
            continue
        seen.add(name)
        at = text.find("${env:" + name + "}")
        while at > 0 and text[at - 1] == "$":  # `$${env:X}` is literal text
            at = text.find("${env:" + name + "}", at + 1)
        if at < 0:
            kept.append(diag)
            continue
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        kept.append(Diagnostic(file, line, column, diag.path, diag.message))
    problems[:] = kept


def _too_big_at(
    problem: Diagnostic, root: Node, device: tuple[Any, ...], override: Any, default_payload: Any
) -> Diagnostic:
    """A payload over the limit, pointed at what makes it too big: `spec.payload` when the
    device only inherits it (or it is too big alone), else the device's own `payload`."""
    if override is not None and not _over_limit(default_payload):
        where: tuple[Any, ...] = (*device, "payload")
        extra = " (this device's payload, merged over spec.payload)"
    else:
        where = ("spec", "payload")
        extra = " (spec.payload, shared by the manifest's devices)"
    node = _lookup(root, where, at_key=True)
    if node is None:
        return problem
    line, column = _mark(node)
    return Diagnostic(problem.file, line, column, _json_path(where), problem.message + extra)


def _over_limit(payload: Any) -> bool:
    try:
        return len(canonical_payload(payload).encode("utf-8")) > MAX_PAYLOAD_BYTES
    except (TypeError, ValueError, RecursionError):
        return False


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError):
        return "NaN and infinity are not JSON numbers"
    return f"{exc} (quote the value, or use only strings as mapping keys)"


# --------------------------------------------------------------------------- schema errors


def schema_problems(
    file: str, document: Any, root: Node, definition: str | None = None
) -> list[Diagnostic]:
    """Every schema violation of one document, each at the line of the offending node."""
    problems: list[Diagnostic] = []
    for error in _full_validator(definition).iter_errors(document):
        for path, message in _explain(error):
            node = _lookup(root, path, at_key=True)
            line, column = _mark(node if node is not None else root)
            problems.append(Diagnostic(file, line, column, _json_path(path), message))
    if not problems:  # the fast validator and jsonschema disagree: never pass silently
        problems.append(Diagnostic(file, *_mark(root), "$", "document does not match the schema"))
    return sorted(problems, key=lambda d: (d.line, d.column, d.path))


def _explain(error: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(allowed), key=str):
            yield (*path, key), messages.unknown_key(key, allowed)
    elif error.validator == "anyOf" and error.context:
        yield from _explain_any_of(error, path)
    elif error.validator == "const":
        yield (
            path,
            f"must be {messages.value_text(error.validator_value)}, not "
            + (messages.value_text(error.instance)),
        )
    elif error.validator == "type":
        yield path, messages.wrong_type(error.validator_value, error.instance)
    elif error.validator == "pattern":
        described = str(error.schema.get("description", ""))
        yield path, messages.no_match(error.validator_value, error.instance, described)
    elif error.validator == "required":
        yield path, f"missing key '{_missing_key(error)}'"
    elif error.validator == "minItems" and error.instance == [] and path == ("spec", "devices"):
        yield path, "must list at least one device"
    elif error.validator == "propertyNames":
        pattern = error.schema.get("propertyNames", {}).get("pattern", "")
        words = messages.PATTERN_WORDS.get(pattern, "")
        why = f": {words}" if words else ""
        yield (
            (*path, error.instance),
            f"invalid label key {messages.value_text(error.instance)}{why}",
        )
    else:
        yield path, messages.plain(error.message)


def _missing_key(error: Any) -> str:
    found = re.match(r"^'([^']*)' is a required property", error.message)
    return found[1] if found else str(error.validator_value)


def _explain_any_of(error: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Explain the alternative whose type fits the value (a device name or mapping, …)."""
    wrong_type = {
        sub.schema_path[0] for sub in error.context if sub.schema_path and _is_type_error(sub)
    }
    fits = [
        sub for sub in error.context if sub.schema_path and sub.schema_path[0] not in wrong_type
    ]
    if not fits and path[:2] == ("spec", "devices") and len(path) == 3:
        yield path, "a device must be a name or a mapping with `name` (and `labels`, `payload`)"
    elif not fits:
        described = error.schema.get("description", "")
        yield path, f"{messages.value_text(error.instance)} is not allowed here: {described}"
    for sub in fits:
        if sub.schema_path[0] == fits[0].schema_path[0]:
            yield from _explain(sub)


def _is_type_error(sub: Any) -> bool:
    if sub.validator == "const":
        return type(sub.instance) is not type(sub.validator_value)
    return bool(sub.validator == "type" and not sub.relative_path)


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _lookup(root: Node, path: Sequence[Any], at_key: bool = False) -> Node | None:
    """The node at a JSON path; with `at_key`, a collection value is reported at its key."""
    node: Node = root
    for depth, part in enumerate(path):
        if isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        elif isinstance(node, MappingNode):
            pair = _find_pair(node, part)
            if pair is None:
                return node
            key_node, value_node = pair
            is_last = depth == len(path) - 1
            node = key_node if at_key and is_last and _points_at_key(value_node) else value_node
        else:
            return node
    return node


def _find_pair(node: MappingNode, key: Any) -> tuple[Node, Node] | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == str(key):
            return key_node, value_node
    return None


def _points_at_key(value_node: Node) -> bool:
    # Collections start on the next line; point at the key, where the reader looks.
    return isinstance(value_node, (MappingNode, SequenceNode))


# --------------------------------------------------------------------------- across files


def cross_file_problems(result: LoadResult) -> list[Diagnostic]:
    """Duplicate manifest names and devices, each naming both places."""
    problems: list[Diagnostic] = []
    first_manifest: dict[str, tuple[str, int]] = {}
    for name, file, line in result.names:
        earlier = first_manifest.setdefault(name, (file, line))
        if earlier != (file, line):
            message = f"duplicate manifest name '{name}': also defined at {earlier[0]}:{earlier[1]}"
            problems.append(Diagnostic(file, line, 1, "$.metadata.name", message))
    first_device: dict[str, DesiredDevice] = {}
    for device in result.devices:
        earlier_device = first_device.setdefault(device.key, device)
        if earlier_device is not device:
            message = f"device {device.key} is declared twice: first at {earlier_device.source}"
            problems.append(Diagnostic(device.file, device.line, 1, "$.spec.devices", message))
    problems.extend(dependency_problems(result.manifests))
    return problems


def file_documents(path: str) -> list[tuple[Any, Node]]:
    """The documents of one YAML file with their node trees (problems are left out)."""
    text, problem = _read_text(Path(path))
    return [] if problem is not None else list(_documents(path, text, []))


def line_of(root: Node, path: Sequence[Any]) -> int:
    """The 1-based line of the node at a JSON path inside a document."""
    node = _lookup(root, path, at_key=True)
    return _mark(node if node is not None else root)[0]


def item_marks(root: Node, path: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(line, column) of each item of the sequence at `path`."""
    return _item_marks(root, path)


def summary_line(result: LoadResult) -> str:
    return (
        f"{result.files} file(s), {len(result.manifests)} manifest(s), "
        f"{len(result.devices)} device(s)"
    )


def devices_by_key(devices: Iterable[DesiredDevice]) -> Mapping[str, DesiredDevice]:
    return {device.key: device for device in devices}
