"""Device inventories: CSV (header, BOM, quoting, row numbers), YAML/JSON lists, limits."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from rrpcsync.manifests import inventory
from rrpcsync.manifests.loader import LoadResult, load_manifests

from .helpers import run, write


def manifest(tmp_path: Path, sources: str, extra: str = "", name: str = "m") -> Path:
    return write(
        tmp_path / f"{name}.yaml",
        "apiVersion: rrpcsync/v1\n"
        "kind: DeviceConfig\n"
        f"metadata: {{name: {name}, labels: {{site: sh}}}}\n"
        "spec:\n"
        "  productId: P1\n"
        "  payload: {a: 1}\n"
        f"  devicesFrom: {sources}\n{extra}",
    )


def csv_file(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def problems(result: LoadResult) -> list[tuple[str, int, str]]:
    return [(Path(d.file).name, d.line, d.message) for d in result.diagnostics]


# --------------------------------------------------------------------------- CSV


def test_csv_rows_become_devices_with_labels_and_row_sources(tmp_path: Path) -> None:
    csv_file(tmp_path / "inv" / "floor.csv", "name,floor,rack\nd1,3,r1\nd2,4,\n\nd3,,r2\n")
    result = load_manifests([manifest(tmp_path, "[inv/floor.csv]")])
    assert result.ok, result.diagnostics
    inv = str(tmp_path / "inv" / "floor.csv")
    assert [(d.key, dict(d.labels), d.source) for d in result.devices] == [
        ("P1/d1", {"site": "sh", "floor": "3", "rack": "r1"}, f"{inv}:2"),
        ("P1/d2", {"site": "sh", "floor": "4"}, f"{inv}:3"),  # an empty cell: label unset
        ("P1/d3", {"site": "sh", "rack": "r2"}, f"{inv}:5"),  # the blank line still counts
    ]
    assert {d.payload for d in result.devices} == {'{"a":1}'}
    assert result.manifests[0].devices == 3


def test_csv_product_column_spans_products(tmp_path: Path) -> None:
    csv_file(tmp_path / "all.csv", "productId,name\nPA,d1\nPB,d1\n")
    result = load_manifests([manifest(tmp_path, "[all.csv]")])
    assert [(d.key, d.product_id, d.device_name) for d in result.devices] == [
        ("PA/d1", "PA", "d1"),
        ("PB/d1", "PB", "d1"),
    ]


def test_csv_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    csv_file(tmp_path / "bom.csv", "\ufeffname,floor\r\nd1,3\r\nd2,4\r\n")
    result = load_manifests([manifest(tmp_path, "[bom.csv]")])
    assert result.ok, result.diagnostics
    assert [(d.device_name, d.labels["floor"], d.line) for d in result.devices] == [
        ("d1", "3", 2),
        ("d2", "4", 3),
    ]


def test_csv_quoting_commas_quotes_and_newlines(tmp_path: Path) -> None:
    text = 'name,note\nd1,"a, b"\nd2,"say ""hi"""\nd3,"two\nlines"\nd4,plain\n'
    csv_file(tmp_path / "q.csv", text)
    result = load_manifests([manifest(tmp_path, "[q.csv]")])
    assert result.ok, result.diagnostics
    assert [(d.device_name, d.labels["note"], d.line) for d in result.devices] == [
        ("d1", "a, b", 2),
        ("d2", 'say "hi"', 3),
        ("d3", "two\nlines", 4),
        ("d4", "plain", 6),  # the row after a two-line field: its own line number
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name,floor\nd1,3\nd 2,4\n", 3, "device name 'd 2' must match"),
        ("name,floor\nd1,3\n,4\n", 3, "the name is empty"),
        ("name,floor\nd1,3\nd2,4,extra\n", 3, "row has 3 field(s), the header has 2 (name,floor)"),
        ("name,floor\nd1\n", 2, "row has 1 field(s), the header has 2"),
        ("floor,rack\n3,r1\n", 1, "CSV header has no 'name' column (found: floor, rack)"),
        ("name,floor,floor\nd1,3,4\n", 1, "column 'floor' appears twice"),
        ("name,,rack\nd1,3,4\n", 1, "column 2: empty column name"),
        ("name,fl oor\nd1,3\n", 1, "'fl oor' is not a valid label key"),
        ("", 1, "CSV inventory has no header row"),
        ('name,floor\nd1,"3"x\n', 2, "CSV: ',' expected after '\"'"),
        ('name,floor\nd1,"3\n', 2, "CSV: unexpected end of data"),
        ("productId,name\nP-1,d1\n", 2, "productId 'P-1' must match"),
        (f"name,floor\nd1,{'x' * 64}\n", 2, "label 'floor' is longer than 63 characters"),
    ],
)
def test_csv_errors_name_the_file_and_row(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    csv_file(tmp_path / "bad.csv", text)
    result = load_manifests([manifest(tmp_path, "[bad.csv]")])
    found = problems(result)
    assert [(file, at) for file, at, _ in found] == [("bad.csv", line)], found
    assert message in found[0][2]


def test_every_bad_row_is_reported_and_good_rows_still_load(tmp_path: Path) -> None:
    csv_file(tmp_path / "inv.csv", "name\nd1\nbad name\nd3\nbad!\n")
    result = load_manifests([manifest(tmp_path, "[inv.csv]")])
    assert [(file, line) for file, line, _ in problems(result)] == [("inv.csv", 3), ("inv.csv", 5)]
    assert [d.device_name for d in result.devices] == ["d1", "d3"]


def test_csv_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    csv_file(tmp_path / "latin.csv", "name,city\nd1,Köln\n", encoding="latin-1")
    result = load_manifests([manifest(tmp_path, "[latin.csv]")])
    [problem] = result.diagnostics
    assert (Path(problem.file).name, problem.line, problem.column) == ("latin.csv", 2, 5)
    assert "not valid UTF-8 (byte 0xf6)" in problem.message


# --------------------------------------------------------------------------- sources together


def test_inventory_combines_with_spec_devices_and_overrides(tmp_path: Path) -> None:
    csv_file(tmp_path / "inv.csv", "name,floor\nd2,3\nd3,4\n")
    extra = (
        "  devices: [d1]\n"
        "  overrides:\n"
        "    - {selector: floor=3, payload: {a: 3}}\n"
        "    - {selector: '!floor', payload: {a: 0}}\n"
    )
    result = load_manifests([manifest(tmp_path, "[inv.csv]", extra)])
    assert result.ok, result.diagnostics
    assert [(d.device_name, d.payload) for d in result.devices] == [
        ("d1", '{"a":0}'),
        ("d2", '{"a":3}'),
        ("d3", '{"a":1}'),
    ]


def test_duplicates_across_sources_name_both_places(tmp_path: Path) -> None:
    csv_file(tmp_path / "a.csv", "name\nd1\nd2\n")
    csv_file(tmp_path / "b.csv", "name\nd3\nd2\n")
    result = load_manifests([manifest(tmp_path, "[a.csv, b.csv]", "  devices: [d3]\n")])
    a, b, m = (str(tmp_path / n) for n in ("a.csv", "b.csv", "m.yaml"))
    assert [(d.file, d.line, d.message) for d in result.diagnostics] == [
        (b, 2, f"device P1/d3 is declared twice: first at {m}:8"),
        (b, 3, f"device P1/d2 is declared twice: first at {a}:3"),
    ]


def test_glob_patterns_read_files_in_order_and_once(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        csv_file(tmp_path / "inv" / f"{name}.csv", f"name\n{name}1\n")
    result = load_manifests([manifest(tmp_path, "[inv/*.csv, inv/a.csv]")])
    assert result.ok, result.diagnostics
    assert [d.device_name for d in result.devices] == ["a1", "b1", "c1"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ("[nowhere/*.csv]", "inventory pattern 'nowhere/*.csv' matches no file"),
        ("[/etc/devices.csv]", "must be relative to the manifest's folder"),
        ("[devices.txt]", "an inventory is a .csv, .yaml, .yml or .json file"),
        ("[]", "should be non-empty"),
    ],
)
def test_bad_references_point_at_the_manifest(tmp_path: Path, sources: str, message: str) -> None:
    result = load_manifests([manifest(tmp_path, sources)])
    found = problems(result)
    assert [(file, line) for file, line, _ in found] == [("m.yaml", 7)], found
    assert message in found[0][2]


def test_missing_file_is_an_error_at_the_file(tmp_path: Path) -> None:
    result = load_manifests([manifest(tmp_path, "[missing.csv]")])
    assert problems(result) == [("missing.csv", 1, "cannot read file: No such file or directory")]


def test_empty_inventory_means_no_devices(tmp_path: Path) -> None:
    csv_file(tmp_path / "empty.csv", "name,floor\n")
    result = load_manifests([manifest(tmp_path, "[empty.csv]")])
    assert problems(result) == [("m.yaml", 7, "no devices: the inventories list none")]


def test_manifest_needs_devices_or_devices_from(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m}\n"
        "spec:\n  productId: P1\n  payload: {a: 1}\n",
    )
    result = load_manifests([path])
    assert problems(result) == [("m.yaml", 4, "missing key 'devices'")]


# --------------------------------------------------------------------------- YAML / JSON lists


def test_yaml_inventory_has_the_shape_of_spec_devices(tmp_path: Path) -> None:
    write(
        tmp_path / "inv" / "devices.yml",
        "- d1\n- name: d2\n  labels: {floor: '3'}\n  payload: {b: 2}\n  expect: {regex: ok}\n",
    )
    result = load_manifests([manifest(tmp_path, "[inv/devices.yml]", "  expect: {json: false}\n")])
    assert result.ok, result.diagnostics
    inv = str(tmp_path / "inv" / "devices.yml")
    assert [(d.device_name, d.payload, d.source) for d in result.devices] == [
        ("d1", '{"a":1}', f"{inv}:1"),
        ("d2", '{"a":1,"b":2}', f"{inv}:2"),
    ]
    assert result.devices[0].expect is not None and result.devices[0].expect.require_json is False
    assert result.devices[1].expect is not None and result.devices[1].expect.regex == "ok"


def test_json_inventory(tmp_path: Path) -> None:
    items = [{"name": "d1", "labels": {"floor": "3"}}, "d2"]
    (tmp_path / "devices.json").write_text(json.dumps(items, indent=2), "utf-8")
    result = load_manifests([manifest(tmp_path, "[devices.json]")])
    assert result.ok, result.diagnostics
    assert [(d.device_name, d.line) for d in result.devices] == [("d1", 2), ("d2", 8)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- d1\n- name: d2\n  colour: red\n", 3, "unknown key 'colour'"),
        ("- d1\n- {name: 'bad name'}\n", 2, "device names are 1–48 letters"),
        ("devices: [d1]\n", 1, "must be a list, not a mapping"),
        ("- d1\n---\n- d2\n", 3, "more than one document"),
        ("- d1\n- [unclosed\n", 3, "YAML:"),
    ],
)
def test_yaml_inventory_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    write(tmp_path / "devices.yaml", text)
    result = load_manifests([manifest(tmp_path, "[devices.yaml]")])
    found = problems(result)
    assert [(file, at) for file, at, _ in found] == [("devices.yaml", line)], found
    assert message in found[0][2]


# --------------------------------------------------------------------------- limits


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    outcome: list[LoadResult] = []
    worker = threading.Thread(
        target=lambda: outcome.append(load_manifests([manifest(tmp_path, "[pipe.csv]")]))
    )
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO inventory blocked")
    assert problems(outcome[0]) == [("pipe.csv", 1, "not a regular file (a FIFO)")]


def test_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    result = load_manifests([manifest(tmp_path, "[dir.csv]")])
    assert problems(result) == [("dir.csv", 1, "not a regular file (a folder)")]


def test_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_file(tmp_path / "big.csv", "name\n" + "".join(f"d{i}\n" for i in range(100)))
    monkeypatch.setattr(inventory, "MAX_INVENTORY_BYTES", 100)
    result = load_manifests([manifest(tmp_path, "[big.csv]")])
    assert problems(result) == [
        ("big.csv", 1, "file is larger than 100 bytes (the limit for one file)")
    ]


def test_hundred_files_of_a_thousand_rows(tmp_path: Path) -> None:
    for part in range(100):
        rows = "".join(f"dev-{part:03d}-{row:04d},{row % 7},r{row % 13}\n" for row in range(1000))
        csv_file(tmp_path / "inv" / f"part-{part:03d}.csv", "name,floor,rack\n" + rows)
    extra = "  overrides:\n    - {selector: floor=3, payload: {a: 3}}\n"
    result = load_manifests([manifest(tmp_path, "[inv/*.csv]", extra)])
    assert result.ok, result.diagnostics[:3]
    assert len(result.devices) == 100_000
    last = result.devices[-1]
    assert (last.device_name, Path(last.file).name, last.line) == (
        "dev-099-0999",
        "part-099.csv",
        1001,
    )
    assert sum(d.payload == '{"a":3}' for d in result.devices) == 100 * len(range(3, 1000, 7))


# --------------------------------------------------------------------------- CLI


def test_cli_errors_and_plan_lines_point_at_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    csv_file(Path("inv.csv"), "name,floor\nd1,3\nbad name,4\n")
    manifest(Path("."), "[inv.csv]")
    result = run(capsys, "validate", "m.yaml")
    assert result.code == 1
    assert result.err_lines[0] == (
        "inv.csv:3:1: error: $: device name 'bad name' must match ^[A-Za-z0-9_:.\\-]{1,48}$"
    )
    csv_file(Path("inv.csv"), "name,floor\nd1,3\nd2,4\n")
    plan = run(capsys, "plan", "m.yaml")
    assert "      P1/d2  (inv.csv:3)" in plan.out_lines  # grouped: two identical creates
