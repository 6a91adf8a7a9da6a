"""Device inventories (`spec.devicesFrom`): devices listed in CSV, YAML or JSON files.

    spec:
      devicesFrom: [inventory/floor-3.csv, inventory/*.csv]   # relative to the manifest

- CSV: a header row with a `name` column (and `productId` when one file spans products);
  every other column is a label, and an empty cell leaves that label unset. UTF-8, with or
  without a byte-order mark; fields may be quoted ("a, b"; "" inside quotes is one ").
- YAML / JSON: one list of the same shape as `spec.devices` (names, or mappings with `name`,
  `labels`, `payload`, `expect`).

Each device remembers its row (`inventory.csv:1234`), so every error and plan line points
there. Only regular files are read, each at most MAX_INVENTORY_BYTES (manifests/files.py).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from rrpcsync.errors import Diagnostic, ManifestError
from rrpcsync.manifests.files import MAX_INPUT_BYTES, read_manifest_file
from rrpcsync.model import EMPTY_LABELS

MAX_INVENTORY_BYTES = MAX_INPUT_BYTES  # 64 MiB, over a million CSV rows: split bigger ones
CSV_SUFFIXES = (".csv",)
LIST_SUFFIXES = (".yaml", ".yml", ".json")
NAME_COLUMN = "name"
PRODUCT_COLUMN = "productId"
MAX_LABEL_VALUE = 63
# the manifest schema's patterns ($defs.deviceName, productId, labels)
DEVICE_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,48}")
PRODUCT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?")
_GLOB_CHARS = re.compile(r"[*?\[]")


class Row(NamedTuple):
    """One CSV device: its labels are the manifest's with the row's non-empty cells over them."""

    name: str
    product_id: str | None  # the productId column, when the file has one
    labels: Mapping[str, str]
    file: str
    line: int


class InventoryFile(NamedTuple):
    path: str  # as shown in messages: the manifest's folder joined with the reference
    reference: int  # index in spec.devicesFrom


class InventoryError(Exception):
    """A problem with a whole file (unreadable, not UTF-8, bad header): one diagnostic."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


# --------------------------------------------------------------------------- finding files


def resolve(
    manifest_file: str, references: list[str]
) -> tuple[list[InventoryFile], list[tuple[int, str]]]:
    """The files `spec.devicesFrom` names, in order; problems as (reference index, message)."""
    folder = os.path.dirname(manifest_file)
    found: list[InventoryFile] = []
    problems: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, reference in enumerate(references):
        paths, problem = _expand(folder, reference)
        if problem is not None:
            problems.append((index, problem))
        for path in paths:
            if path not in seen:  # a file matched by two patterns is read once
                seen.add(path)
                found.append(InventoryFile(path, index))
    return found, problems


def _expand(folder: str, reference: str) -> tuple[list[str], str | None]:
    if os.path.isabs(reference):
        return [], f"inventory {reference!r} must be relative to the manifest's folder"
    joined = os.path.join(folder, reference)
    if _GLOB_CHARS.search(reference) is None:
        return [joined], None
    matches = sorted(glob.glob(joined))
    if not matches:
        return [], f"inventory pattern {reference!r} matches no file"
    return matches, None


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def is_csv(path: str) -> bool:
    return _suffix(path) in CSV_SUFFIXES


# --------------------------------------------------------------------------- reading


def read_text(path: str, limit: int | None = None) -> str:
    """The file's text: a regular file of at most `limit` bytes (default
    MAX_INVENTORY_BYTES; manifests/files.py), valid UTF-8 with or without a byte-order mark."""
    try:
        data = read_manifest_file(path, MAX_INVENTORY_BYTES if limit is None else limit)
    except ManifestError as exc:
        problem = exc.diagnostics[0]
        raise InventoryError(problem.line, problem.column, problem.message) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InventoryError(
            line,
            column,
            f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8",
        ) from None


# --------------------------------------------------------------------------- CSV


class CsvProblem(NamedTuple):
    line: int
    column: int
    message: str


def read_csv(
    path: str, text: str, problems: list[CsvProblem], base: Mapping[str, str] = EMPTY_LABELS
) -> Iterator[Row]:
    """Rows of a CSV inventory, their labels merged over `base` (the manifest's labels).

    Row problems are appended to `problems` (the row is skipped); a problem with the header
    or the CSV syntax raises InventoryError (nothing more is read).
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    layout = _Layout(_header(reader), base)
    name_at, product_at, width = layout.name_at, layout.product_at, len(layout.header)
    line = reader.line_num + 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:
                continue  # a blank line
            if len(cells) != width:
                problems.append(CsvProblem(start, 1, _width_problem(len(cells), layout.header)))
                continue
            name = cells[name_at]
            if DEVICE_NAME.fullmatch(name) is None:
                problems.append(CsvProblem(start, name_at + 1, _name_problem(name)))
                continue
            product_id = cells[product_at] if product_at >= 0 else None
            if product_id is not None and PRODUCT_ID.fullmatch(product_id) is None:
                problems.append(CsvProblem(start, product_at + 1, _product_problem(product_id)))
                continue
            labels = layout.labels(cells, start, problems)
            if labels is not None:
                yield Row(name, product_id, labels, path, start)
    except csv.Error as exc:
        raise InventoryError(
            reader.line_num, 1, f"CSV: {exc} (quote fields holding commas, quotes or newlines)"
        ) from None


class _Layout:
    """Where a CSV's name, productId and label cells are; the label sets made so far.

    Rows with the same label cells share one (read-only) labels mapping: made and checked
    once, and pickled once when a worker process sends the devices back.
    """

    def __init__(self, header: list[str], base: Mapping[str, str]) -> None:
        self.header = header
        self.name_at = header.index(NAME_COLUMN)
        self.product_at = header.index(PRODUCT_COLUMN) if PRODUCT_COLUMN in header else -1
        self.label_at = [i for i in range(len(header)) if i not in (self.name_at, self.product_at)]
        self.base = base
        self.made: dict[tuple[str, ...], Mapping[str, str] | tuple[int, str]] = {}

    def labels(
        self, cells: list[str], line: int, problems: list[CsvProblem]
    ) -> Mapping[str, str] | None:
        values = tuple([cells[i] for i in self.label_at])
        made = self.made.get(values)
        if made is None:
            made = self.made[values] = self._make(values)
        if isinstance(made, tuple):
            problems.append(CsvProblem(line, *made))
            return None
        return made

    def _make(self, values: tuple[str, ...]) -> Mapping[str, str] | tuple[int, str]:
        """The merged labels, or (column, problem) for a value that is too long."""
        if not any(values):
            return self.base
        labels = dict(self.base)
        for i, value in zip(self.label_at, values, strict=True):
            if len(value) > MAX_LABEL_VALUE:
                key = self.header[i]
                return i + 1, f"label {key!r} is longer than {MAX_LABEL_VALUE} characters"
            if value:
                labels[self.header[i]] = value
        return labels


def _header(reader: Any) -> list[str]:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InventoryError(1, 1, f"CSV header: {exc}") from None
    if header is None or not any(cell.strip() for cell in header):
        raise InventoryError(
            1,
            1,
            f"CSV inventory has no header row (the first row names the columns: "
            f"{NAME_COLUMN},<label>,...)",
        )
    header = [cell.strip() for cell in header]
    for position, key in enumerate(header, 1):
        problem = _column_problem(key, header[: position - 1])
        if problem is not None:
            raise InventoryError(1, position, f"CSV header, column {position}: {problem}")
    if NAME_COLUMN not in header:
        raise InventoryError(
            1, 1, f"CSV header has no {NAME_COLUMN!r} column (found: {', '.join(header)})"
        )
    return header


def _column_problem(key: str, before: list[str]) -> str | None:
    if not key:
        return "empty column name"
    if key in before:
        return f"column {key!r} appears twice"
    if key not in (NAME_COLUMN, PRODUCT_COLUMN) and LABEL_KEY.fullmatch(key) is None:
        return f"{key!r} is not a valid label key (letters, digits, '-', '_', '.', '/'; at most 63)"
    return None


def _width_problem(count: int, header: list[str]) -> str:
    columns = ",".join(header)
    return (
        f"row has {count} field(s), the header has {len(header)} ({columns}); "
        "quote fields that hold commas"
    )


def _product_problem(product_id: str) -> str:
    return f"productId {product_id!r} must match ^[A-Za-z0-9]{{1,32}}$"


def _name_problem(name: str) -> str:
    if not name:
        return "the name is empty"
    return f"device name {name!r} must match ^[A-Za-z0-9_:.\\-]{{1,48}}$"


def problem_diagnostic(path: str, problem: CsvProblem, json_path: str) -> Diagnostic:
    return Diagnostic(path, problem.line, problem.column, json_path, problem.message)
