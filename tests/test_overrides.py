"""Selector overrides: precedence (a table of cases), matching, errors, warnings, attribution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.manifests.loader import load_manifests
from rrpcsync.manifests.overrides import Layer, Layering, attribute, parse_overrides

from .helpers import run, write


def fleet(
    tmp_path: Path, overrides: str, devices: str, payload: str = "{a: 1, p: {x: 1, y: 1}}"
) -> Path:
    return write(
        tmp_path / "m.yaml",
        "apiVersion: rrpcsync/v1\n"
        "kind: DeviceConfig\n"
        "metadata: {name: m, labels: {site: sh}}\n"
        "spec:\n"
        "  productId: P1\n"
        f"  payload: {payload}\n"
        f"  overrides:\n{overrides}"
        f"  devices:\n{devices}",
    )


def payloads(path: Path) -> dict[str, Any]:
    result = load_manifests([path])
    assert result.ok, result.diagnostics
    return {d.device_name: json.loads(d.payload) for d in result.devices}


# Precedence: manifest default -> overrides in the order listed -> the device's own payload.
# Each case: overrides, one device, and the payload it must end with.
PRECEDENCE = [
    pytest.param(
        "    - {selector: site=sh, payload: {a: 2}}\n",
        "    - d1\n",
        {"a": 2, "p": {"x": 1, "y": 1}},
        id="override beats the default",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {a: 2}}\n",
        "    - {name: d1, payload: {a: 3}}\n",
        {"a": 3, "p": {"x": 1, "y": 1}},
        id="device beats an override",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {a: 2}}\n    - {selector: floor=3, payload: {a: 4}}\n",
        '    - {name: d1, labels: {floor: "3"}}\n',
        {"a": 4, "p": {"x": 1, "y": 1}},
        id="later override beats an earlier one",
    ),
    pytest.param(
        "    - {selector: floor=3, payload: {a: 4}}\n    - {selector: site=sh, payload: {a: 2}}\n",
        '    - {name: d1, labels: {floor: "3"}}\n',
        {"a": 2, "p": {"x": 1, "y": 1}},
        id="order listed, not specificity",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {p: {x: 2}}}\n"
        "    - {selector: site, payload: {p: {z: 3}}}\n",
        "    - {name: d1, payload: {p: {y: 9}}}\n",
        {"a": 1, "p": {"x": 2, "y": 9, "z": 3}},
        id="mappings merge key by key through every layer",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {p: null}}\n",
        "    - d1\n",
        {"a": 1},
        id="null in an override deletes a key",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {p: null}}\n",
        "    - {name: d1, payload: {p: {x: 5}}}\n",
        {"a": 1, "p": {"x": 5}},
        id="device adds back what an override deleted",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {p: [1, 2]}}\n",
        "    - d1\n",
        {"a": 1, "p": [1, 2]},
        id="a list replaces a mapping",
    ),
    pytest.param(
        "    - {selector: site!=sh, payload: {a: 2}}\n",
        "    - d1\n",
        {"a": 1, "p": {"x": 1, "y": 1}},
        id="non-matching override is skipped",
    ),
    pytest.param(
        "    - {selector: site=sh, payload: {a: 2}}\n",
        "    - {name: d1, labels: {site: bj}}\n",
        {"a": 1, "p": {"x": 1, "y": 1}},
        id="device labels decide, over manifest labels",
    ),
    pytest.param(
        '    - {selector: "floor in (3,4),!broken", payload: {a: 5}}\n',
        '    - {name: d1, labels: {floor: "4"}}\n',
        {"a": 5, "p": {"x": 1, "y": 1}},
        id="set and absence requirements (all must hold)",
    ),
    pytest.param(
        '    - {selector: "floor in (3,4),!broken", payload: {a: 5}}\n',
        '    - {name: d1, labels: {floor: "4", broken: "yes"}}\n',
        {"a": 1, "p": {"x": 1, "y": 1}},
        id="one failing requirement skips the override",
    ),
]


@pytest.mark.parametrize(("overrides", "devices", "expected"), PRECEDENCE)
def test_precedence(tmp_path: Path, overrides: str, devices: str, expected: Any) -> None:
    assert payloads(fleet(tmp_path, overrides, devices)) == {"d1": expected}


def test_string_payload_layers_replace(tmp_path: Path) -> None:
    path = fleet(
        tmp_path,
        "    - {selector: site=sh, payload: RAW}\n",
        "    - d1\n    - {name: d2, labels: {site: bj}}\n",
    )
    result = load_manifests([path])
    assert [d.payload for d in result.devices] == ["RAW", '{"a":1,"p":{"x":1,"y":1}}']


def test_devices_remember_the_overrides_that_applied(tmp_path: Path) -> None:
    overrides = (
        "    - {selector: site=sh, payload: {a: 2}}\n    - {selector: floor=3, payload: {a: 3}}\n"
    )
    devices = (
        '    - d1\n    - {name: d2, labels: {floor: "3"}}\n    - {name: d3, labels: {site: bj}}\n'
    )
    result = load_manifests([fleet(tmp_path, overrides, devices)])
    file = str(tmp_path / "m.yaml")
    assert {d.device_name: d.overrides for d in result.devices} == {
        "d1": (f"{file}:8",),
        "d2": (f"{file}:8", f"{file}:9"),
        "d3": (),
    }


def test_identical_payloads_share_text_and_hash(tmp_path: Path) -> None:
    devices = "".join(f'    - {{name: d{i}, labels: {{floor: "{i % 2}"}}}}\n' for i in range(6))
    result = load_manifests(
        [fleet(tmp_path, "    - {selector: floor=1, payload: {a: 2}}\n", devices)]
    )
    by_floor: dict[str, set[int]] = {}
    for device in result.devices:
        by_floor.setdefault(device.labels["floor"], set()).add(id(device.payload))
    assert {len(ids) for ids in by_floor.values()} == {1}  # one string per combination
    assert len({d.payload_sha256 for d in result.devices}) == 2


# --------------------------------------------------------------------------- errors / warnings


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("'site in sh'", "invalid selector 'site in sh'"),
        ("'a=b=c'", "invalid selector 'a=b=c'"),
        ("' , '", "empty selector"),
        ("''", "should be non-empty"),
    ],
)
def test_bad_selector_is_an_error_at_its_line(tmp_path: Path, selector: str, message: str) -> None:
    overrides = (
        "    - {selector: site=sh, payload: {a: 2}}\n"
        f"    - {{selector: {selector}, payload: {{a: 3}}}}\n"
    )
    result = load_manifests([fleet(tmp_path, overrides, "    - d1\n")])
    assert [(Path(d.file).name, d.line, d.path) for d in result.diagnostics] == [
        ("m.yaml", 9, "$.spec.overrides[1].selector")
    ]
    assert message in result.diagnostics[0].message


def test_override_needs_selector_and_payload(tmp_path: Path) -> None:
    result = load_manifests(
        [fleet(tmp_path, "    - {selector: site=sh, extra: 1}\n", "    - d1\n")]
    )
    messages = sorted(d.message for d in result.diagnostics)
    assert any("missing key 'payload'" in m for m in messages), messages
    assert any("unknown key 'extra'" in m for m in messages), messages


def test_override_matching_no_device_is_a_warning(tmp_path: Path) -> None:
    overrides = (
        "    - {selector: site=sh, payload: {a: 2}}\n    - {selector: rack=r9, payload: {a: 3}}\n"
    )
    result = load_manifests([fleet(tmp_path, overrides, "    - d1\n")])
    assert result.ok
    assert [(d.line, d.column, d.path, d.message) for d in result.warnings] == [
        (
            9,
            7,
            "$.spec.overrides[1].selector",
            "override selector 'rack=r9' matches no device of this manifest",
        )
    ]


def test_payload_error_names_the_overrides_that_built_it(tmp_path: Path) -> None:
    big = "x" * 70_000
    overrides = f"    - {{selector: site=sh, payload: {{blob: {big}}}}}\n"
    result = load_manifests([fleet(tmp_path, overrides, "    - d1\n")])
    [problem] = result.diagnostics
    assert (problem.line, problem.path) == (10, "$.spec.devices[0].payload")
    assert "over the 65,536-byte MQTT limit (with the overrides at " in problem.message
    assert problem.message.endswith("m.yaml:8)")


# --------------------------------------------------------------------------- library pieces


def test_layering_decides_once_per_label_combination() -> None:
    parsed = parse_overrides(
        [{"selector": "floor=3", "payload": {"a": 2}}, {"selector": "site", "payload": {"b": 1}}],
        "m.yaml",
        [(8, 7), (9, 7)],
        lambda path, message: pytest.fail(message),
    )
    layers = Layering({"a": 1}, parsed)
    first = layers.matching({"floor": "3", "site": "sh", "other": "x"})
    again = layers.matching({"floor": "3", "site": "sh", "other": "y"})  # "other" is not asked
    assert first == again == (0, 1)
    assert layers.matching({"floor": "4"}) == ()
    assert layers.base((0, 1)) == {"a": 2, "b": 1}
    assert layers.base((0, 1)) is layers.base((0, 1))
    assert layers.sources((0, 1)) == ("m.yaml:8", "m.yaml:9")
    assert list(layers.unused()) == []


def test_attribute_says_which_layer_set_each_value() -> None:
    default = Layer(
        "spec.payload", "m.yaml:6", {"method": "set", "params": {"interval": 30, "unit": "C"}}
    )
    site = Layer("overrides[0] (site=sh)", "m.yaml:8", {"params": {"interval": 10, "extra": None}})
    floor = Layer("overrides[1] (floor=3)", "m.yaml:9", {"params": [1, 2]})
    device = Layer("device", "inv.csv:4", None)
    merged, lines = attribute([default, site, device])
    assert merged == {"method": "set", "params": {"interval": 10, "unit": "C"}}
    assert [(a.path, a.value, a.layer.name) for a in lines] == [
        ("method", "set", "spec.payload"),
        ("params.interval", 10, "overrides[0] (site=sh)"),
        ("params.unit", "C", "spec.payload"),
    ]
    merged, lines = attribute([default, site, floor])
    assert merged == {"method": "set", "params": [1, 2]}
    assert [(a.path, a.layer.name) for a in lines] == [
        ("method", "spec.payload"),
        ("params", "overrides[1] (floor=3)"),
    ]


# --------------------------------------------------------------------------- CLI


def test_validate_prints_override_warnings_and_still_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet(Path("."), "    - {selector: rack=r9, payload: {a: 3}}\n", "    - d1\n")
    result = run(capsys, "validate", "m.yaml")
    assert result.code == 0
    assert result.err_lines[0] == (
        "m.yaml:8:7: warning: $.spec.overrides[0].selector: "
        "override selector 'rack=r9' matches no device of this manifest"
    )
    github = run(capsys, "validate", "m.yaml", "--format", "github")
    assert github.out_lines == [
        "::warning file=m.yaml,line=8,col=7::$.spec.overrides[0].selector: "
        "override selector 'rack=r9' matches no device of this manifest"
    ]
    assert run(capsys, "validate", "m.yaml", "--format", "json").out == "[]\n"
    assert "warning: $.spec.overrides[0].selector" in run(capsys, "plan", "m.yaml").err


def test_bad_selector_fails_validate_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet(Path("."), "    - {selector: 'site in sh', payload: {a: 3}}\n", "    - d1\n")
    result = run(capsys, "validate", "m.yaml")
    assert result.code == 1
    assert result.err_lines[0].startswith(
        "m.yaml:8:18: error: $.spec.overrides[0].selector: invalid selector 'site in sh'"
    )


def test_plan_lines_name_the_overrides_and_explain_shows_the_layers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = (
        "    - {selector: site=sh, payload: {p: {x: 2}}}\n"
        '    - {selector: "floor in (3)", payload: {p: {y: 3}, secret: "${env:API_KEY}"}}\n'
    )
    devices = (
        '    - {name: d1, labels: {floor: "3"}, payload: {a: 9}}\n'
        "    - {name: d2, labels: {site: bj}}\n"
    )
    fleet(Path("."), overrides, devices)
    monkeypatch.setenv("API_KEY", "s3cr3t-value")
    plan = run(capsys, "plan", "m.yaml")
    assert "  + P1/d1  (m.yaml:11; overrides m.yaml:8,9)" in plan.out_lines
    assert "  + P1/d2  (m.yaml:12)" in plan.out_lines
    doc = json.loads(run(capsys, "plan", "m.yaml", "--format", "json").out)
    assert [c.get("overrides") for c in doc["changes"]] == [["m.yaml:8", "m.yaml:9"], None]
    explained = run(capsys, "plan", "m.yaml", "--explain", "P1/d1")
    assert explained.code == 0
    assert explained.out_lines == [
        "P1/d1  (m.yaml:11)",
        "  manifest: m  (m.yaml:1)",
        "  labels: floor=3, site=sh",
        "  windows: none (changes are sent at any time)",
        "Layers, each deep-merged over the one before:",
        '  1. spec.payload  (m.yaml:6)  {"a": 1, "p": {"x": 1, "y": 1}}',
        '  2. overrides[0] (site=sh)  (m.yaml:8)  {"p": {"x": 2}}',
        '  3. overrides[1] (floor in (3))  (m.yaml:9)  {"p": {"y": 3}, "secret": "${env:API_KEY}"}',
        '  4. device payload  (m.yaml:11)  {"a": 9}',
        "Payload, each value with the layer that set it:",
        "  a      = 9  ← device payload",
        "  p.x    = 2  ← overrides[0] (site=sh)",
        "  p.y    = 3  ← overrides[1] (floor in (3))",
        '  secret = "${env:API_KEY}"  ← overrides[1] (floor in (3))',
        "Plan: + P1/d1  (m.yaml:11; overrides m.yaml:8,9)",
    ]
    assert "s3cr3t-value" not in explained.out + explained.err + plan.out
    unknown = run(capsys, "plan", "m.yaml", "--explain", "P1/nope")
    assert unknown.code == 1
    assert "--explain P1/nope: no manifest declares this device" in unknown.err


def test_explain_a_csv_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(Path("inv.csv"), "name,floor\nd7,3\n")
    write(
        Path("m.yaml"),
        "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m}\nspec:\n"
        "  productId: P1\n  payload: {a: 1}\n  devicesFrom: [inv.csv]\n"
        "  overrides: [{selector: floor=3, payload: {a: 3}}]\n",
    )
    lines = run(capsys, "plan", "m.yaml", "--explain", "P1/d7").out_lines
    assert lines[0] == "P1/d7  (inv.csv:2)"
    assert "  3. device payload  (inv.csv:2)  (nothing)" in lines
    assert "  a = 3  ← overrides[0] (floor=3)" in lines
