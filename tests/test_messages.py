"""Messages that say what to do: one pass, suggestions, plain words, tabs, indentation, where
a bracket or quote was opened."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rrpcsync.manifests.loader import load_manifests

from .helpers import EXAMPLES, manifest_text, run, write


def errors(tmp_path: Path, text: str) -> list[tuple[int, int, str, str]]:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return [(d.line, d.column, d.path, d.message) for d in load_manifests([path]).diagnostics]


def test_validate_reports_every_error_in_one_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata:\n  name: same\n  name: same\n"
        "  labels: {floor: 3}\nspec:\n  productId: P1\n  payload: {a: 1}\n  devices: [d1]\n"
        "---\n" + manifest_text(name="same", devices="[d2]")
    )
    path = write(tmp_path / "m.yaml", text)
    result = run(capsys, "validate", str(path))
    assert result.code == 1
    lines = [line.split(": error: ", 1)[1] for line in result.err_lines[:-1]]
    assert lines == [
        "$: YAML: duplicate key 'name' (first at line 4); a mapping holds each key once",
        "$.metadata.labels.floor: must be a string, not a number (3); quote it to keep it as "
        'text: "3"',
        f"$.metadata.name: duplicate manifest name 'same': also defined at {path}:1",
    ]
    assert result.err_lines[-1].startswith("3 error(s)")


def test_unknown_keys_get_a_suggestion(tmp_path: Path) -> None:
    text = manifest_text().replace("  name: m1\n", "  name: m1\n  lables: {a: b}\n")
    ((_, _, path, message),) = errors(tmp_path, text)
    assert path == "$.metadata.lables"
    assert message.startswith("unknown key 'lables'; did you mean 'labels'? (allowed: ")
    text = manifest_text().replace("  productId: P1\n", "  productId: P1\n  lables: {a: b}\n")
    ((_, _, _, message),) = errors(tmp_path, text)
    assert "did you mean 'labels' (under metadata)?" in message
    text = manifest_text().replace("  payload:", "  Payload:")
    assert "did you mean 'payload'?" in errors(tmp_path, text)[0][3]


def test_patterns_and_values_are_explained_in_words(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        manifest_text(product="P-1", devices="[{name: 'a b', labels: {on: true, off: null}}]"),
    )
    messages = [message for *_, message in found]
    assert "'P-1' is not allowed: product IDs are 1–32 letters or digits" in messages
    assert "'a b' is not allowed: device names are 1–48 letters, digits or _ : . -" in messages
    assert 'must be a string, not true (a boolean); quote it to keep it as text: "true"' in messages
    assert "must be a string, not empty (null)" in messages
    for _, _, _, message in found:
        assert not re.search(r"\b(None|True|False)\b", message), message
        assert "^" not in message and "{1," not in message, message


def test_no_example_message_shows_python_values_or_regexes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for path in sorted((EXAMPLES / "invalid").glob("*.yaml")):
        result = run(capsys, "validate", str(path))
        assert result.code == 1, path
        for line in result.err_lines:
            assert not re.search(r"\b(None|True|False)\b", line), line
            assert not re.search(r"'\^.*\$'", line), line


def test_a_tab_used_for_indentation_is_named(tmp_path: Path) -> None:
    text = manifest_text().replace("  productId: P1", "\tproductId: P1")
    ((line, column, _, message),) = errors(tmp_path, text)
    assert (line, column) == (6, 1)
    assert message == (
        "YAML: a tab is used for indentation; YAML indents with spaces only (replace the tab)"
    )


def test_unclosed_brackets_and_quotes_point_to_where_they_opened(tmp_path: Path) -> None:
    ((line, _, _, message),) = errors(tmp_path, manifest_text(payload="{method: set"))
    assert line == 8
    assert message.startswith("YAML: the '{' opened at line 7, column 12 is not closed")
    ((_, _, _, message),) = errors(tmp_path, manifest_text(devices="[d1, d2"))
    assert message.startswith("YAML: the '[' opened at line 8, column 12 is not closed")
    ((_, _, _, message),) = errors(tmp_path, manifest_text(payload="'set"))
    assert message.startswith("YAML: the quote opened at line 7, column 12 is not closed")


def test_bad_indentation_says_what_was_expected_where(tmp_path: Path) -> None:
    deeper = manifest_text().replace("  payload:", "    payload:")
    ((line, _, _, message),) = errors(tmp_path, deeper)
    assert line == 7
    assert message == (
        "YAML: bad indentation: this line is indented 4 spaces, more than line 6 (2), whose "
        "value is already given; indent it 2 spaces to make it a sibling key"
    )
    shallower = manifest_text(devices="\n    - d1\n   - d2")
    ((_, _, _, message),) = errors(tmp_path, shallower)
    assert message.startswith("YAML: bad indentation: expected a key at column 3")
    two_colons = manifest_text(payload="a: b")
    ((_, _, _, message),) = errors(tmp_path, two_colons)
    assert "a second ': ' on one line: quote the value" in message


def test_a_payload_over_the_limit_points_to_what_makes_it_too_big(tmp_path: Path) -> None:
    half = "x" * 40_000
    devices = f"\n    - small\n    - name: big\n      payload: {{extra: {half}}}"
    text = manifest_text(payload=f"{{blob: {half}}}", devices=devices)
    ((line, column, path, message),) = errors(tmp_path, text)
    assert (line, column, path) == (11, 7, "$.spec.devices[1].payload")
    assert message.endswith("(this device's payload, merged over spec.payload)")
    shared = manifest_text(payload=f"{{blob: {half + half}}}", devices="[a, b]")
    found = errors(tmp_path, shared)
    assert {(line, path) for line, _, path, _ in found} == {(7, "$.spec.payload")}
