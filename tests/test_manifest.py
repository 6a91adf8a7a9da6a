"""Manifest loading: merge semantics, canonical payloads, line numbers, every error class."""

from __future__ import annotations

import hashlib
import json
import resource
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rrpcsync.manifests import loader as manifest
from rrpcsync.manifests.loader import canonical_payload, load_manifests, merge

from .helpers import EXAMPLES, manifest_text, write


def only_error(tmp_path: Path, text: str) -> tuple[str, int, int, str, str]:
    path = write(tmp_path / "m.yaml", text)
    result = load_manifests([path])
    assert len(result.diagnostics) == 1, result.diagnostics
    d = result.diagnostics[0]
    return Path(d.file).name, d.line, d.column, d.path, d.message


# --------------------------------------------------------------------------- merge / canonical


def test_merge_overrides_keys_deeply() -> None:
    base = {"method": "set", "params": {"a": 1, "b": {"c": 2, "d": 3}}}
    assert merge(base, {"params": {"b": {"c": 9}}}) == {
        "method": "set",
        "params": {"a": 1, "b": {"c": 9, "d": 3}},
    }


def test_merge_null_deletes_key_and_lists_replace() -> None:
    base = {"params": {"a": 1, "list": [1, 2, 3]}, "gone": True}
    assert merge(base, {"gone": None, "params": {"list": [9]}}) == {"params": {"a": 1, "list": [9]}}


def test_merge_does_not_mutate_base() -> None:
    base = {"params": {"a": 1}}
    merge(base, {"params": {"a": 2}})
    assert base == {"params": {"a": 1}}


def test_merge_scalar_replaces_mapping_and_string_replaces_default() -> None:
    assert merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert merge({"a": 1}, "RAW") == "RAW"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values))
def test_merge_with_empty_override_is_identity(doc: dict[str, object]) -> None:
    assert merge(doc, {}) == doc


@given(st.dictionaries(st.text(), json_values))
def test_canonical_payload_ignores_key_order(doc: dict[str, object]) -> None:
    reversed_doc = dict(reversed(list(doc.items())))
    assert canonical_payload(doc) == canonical_payload(reversed_doc)
    assert json.loads(canonical_payload(doc)) == doc


def test_canonical_payload_bytes_keep_utf8_and_sort_keys() -> None:
    text = canonical_payload({"unit": "C", "display": "温度", "a": [1, 2]})
    assert text == '{"a":[1,2],"display":"温度","unit":"C"}'
    assert text.encode("utf-8") == b'{"a":[1,2],"display":"\xe6\xb8\xa9\xe5\xba\xa6","unit":"C"}'


def test_string_payload_is_sent_verbatim(tmp_path: Path) -> None:
    write(tmp_path / "m.yaml", manifest_text(payload='"VOLUME=7; MODE={night}"'))
    (device,) = load_manifests([tmp_path]).devices
    assert device.payload == "VOLUME=7; MODE={night}"
    assert device.payload_sha256 == hashlib.sha256(b"VOLUME=7; MODE={night}").hexdigest()


def test_yaml12_scalars_keep_dates_and_on_off_as_strings(tmp_path: Path) -> None:
    payload = "{day: 2024-01-01, mode: on, flag: true}"
    write(tmp_path / "m.yaml", manifest_text(payload=payload))
    (device,) = load_manifests([tmp_path]).devices
    assert json.loads(device.payload) == {"day": "2024-01-01", "mode": "on", "flag": True}


# --------------------------------------------------------------------------- devices


def test_examples_load_with_shorthand_overrides_labels_and_lines() -> None:
    result = load_manifests([EXAMPLES / "configs"])
    assert result.ok, result.diagnostics
    devices = {d.key: d for d in result.devices}
    assert len(result.manifests) == 4
    assert len(devices) == 10
    one, two, three = (
        devices["ASBHKN/dev-001"],
        devices["ASBHKN/dev-002"],
        devices["ASBHKN/dev-003"],
    )
    assert json.loads(one.payload) == {
        "method": "set_config",
        "params": {"display": "温度", "interval": 30, "unit": "C"},
    }
    assert json.loads(two.payload)["params"]["interval"] == 10
    assert "display" not in json.loads(three.payload)["params"]
    assert dict(two.labels) == {"site": "shanghai", "role": "thermostat", "floor": "3"}
    assert dict(one.labels) == {"site": "shanghai", "role": "thermostat"}
    assert one.source.endswith("shanghai/thermostats.yaml:13")
    assert two.source.endswith("shanghai/thermostats.yaml:14")
    assert devices["ASBHKN/dev-006"].labels["canary"] == "true"
    assert json.loads(devices["GW7Q2Z/gw-south"].payload)["params"]["cards"] == [2001]
    assert devices["SRN01/siren-b"].payload == "VOLUME=3;MODE=night"


def test_multi_document_file_and_device_labels_override(tmp_path: Path) -> None:
    text = manifest_text("a", devices="[d1]") + "---\n" + manifest_text("b", devices="[d2]")
    text = text.replace("  name: b\n", "  name: b\n  labels: {env: prod, tier: x}\n")
    text = text.replace("devices: [d2]", "devices: [{name: d2, labels: {tier: y}}]")
    write(tmp_path / "m.yaml", text)
    result = load_manifests([tmp_path])
    assert result.ok, result.diagnostics
    assert [d.key for d in result.devices] == ["P1/d1", "P1/d2"]
    assert [d.line for d in result.devices] == [8, 18]
    assert dict(result.devices[1].labels) == {"env": "prod", "tier": "y"}
    assert [m.name for m in result.manifests] == ["a", "b"]


def test_files_are_walked_sorted_and_only_yaml(tmp_path: Path) -> None:
    write(tmp_path / "b" / "z.yml", manifest_text("z", devices="[z1]"))
    write(tmp_path / "a.yaml", manifest_text("a", devices="[a1]"))
    write(tmp_path / "b" / "notes.txt", "not a manifest")
    write(tmp_path / ".hidden" / "x.yaml", "garbage: [")
    result = load_manifests([tmp_path])
    assert result.ok
    assert [d.key for d in result.devices] == ["P1/a1", "P1/z1"]
    assert result.files == 2


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "m.yaml", "---\n---\n" + manifest_text())
    assert len(load_manifests([tmp_path]).devices) == 1


# --------------------------------------------------------------------------- every error class


def test_unknown_key_points_at_the_key(tmp_path: Path) -> None:
    text = manifest_text().replace("  payload:", "  paylod:")
    *where, message = only_error(tmp_path, text)
    assert where == ["m.yaml", 7, 3, "$.spec.paylod"]
    hint = "unknown key 'paylod'; did you mean 'payload'? (allowed: "
    assert message.startswith(hint), message
    allowed = message.removeprefix(hint).removesuffix(")")
    assert {"devices", "payload", "productId"} <= set(allowed.split(", ")), message
    assert allowed.split(", ") == sorted(allowed.split(", "))


def test_bad_product_id(tmp_path: Path) -> None:
    _, line, col, path, message = only_error(tmp_path, manifest_text(product="P-1"))
    assert (line, col, path) == (6, 14, "$.spec.productId")
    assert message == "'P-1' is not allowed: product IDs are 1–32 letters or digits"


def test_bad_device_name_in_long_form(tmp_path: Path) -> None:
    text = manifest_text(devices="\n    - ok\n    - name: 'bad name'")
    _, line, _, path, message = only_error(tmp_path, text)
    assert (line, path) == (10, "$.spec.devices[1].name")
    assert message == "'bad name' is not allowed: device names are 1–48 letters, digits or _ : . -"


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = manifest_text(product="P-1", devices="[ok, 'bad name']").replace(
        "kind: DeviceConfig", "kind: X"
    )
    write(tmp_path / "m.yaml", text)
    result = load_manifests([tmp_path])
    assert [d.path for d in result.diagnostics] == [
        "$.kind",
        "$.spec.productId",
        "$.spec.devices[1]",
    ]


def test_empty_device_list(tmp_path: Path) -> None:
    assert only_error(tmp_path, manifest_text(devices="[]"))[3:] == (
        "$.spec.devices",
        "must list at least one device",
    )


def test_labels_must_be_strings(tmp_path: Path) -> None:
    text = manifest_text(devices="[{name: d1, labels: {floor: 3}}]")
    _, line, _, path, message = only_error(tmp_path, text)
    assert (line, path, message) == (
        8,
        "$.spec.devices[0].labels.floor",
        'must be a string, not a number (3); quote it to keep it as text: "3"',
    )


def test_missing_required_field(tmp_path: Path) -> None:
    text = manifest_text().replace("  name: m1\n", "  labels: {}\n")
    assert only_error(tmp_path, text)[1:] == (3, 1, "$.metadata", "missing key 'name'")


def test_duplicate_device_within_a_file_names_both_places(tmp_path: Path) -> None:
    name, line, _, _, message = only_error(tmp_path, manifest_text(devices="\n    - d1\n    - d1"))
    assert (name, line) == ("m.yaml", 10)
    assert message.endswith(
        "device P1/d1 is declared twice: first at " + str(tmp_path / "m.yaml") + ":9"
    )


def test_duplicate_device_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest_text("a"))
    write(tmp_path / "b.yaml", manifest_text("b"))
    result = load_manifests([tmp_path])
    (diag,) = result.diagnostics
    assert diag.file.endswith("b.yaml") and diag.line == 8
    assert diag.message == f"device P1/d1 is declared twice: first at {tmp_path / 'a.yaml'}:8"


def test_duplicate_manifest_name_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest_text("same", devices="[d1]"))
    write(tmp_path / "b.yaml", manifest_text("same", devices="[d2]"))
    (diag,) = load_manifests([tmp_path]).diagnostics
    assert diag.file.endswith("b.yaml")
    assert (
        diag.message == f"duplicate manifest name 'same': also defined at {tmp_path / 'a.yaml'}:1"
    )


def test_payload_over_limit(tmp_path: Path) -> None:
    big = '"' + "x" * 65_535 + '"'
    assert only_error(tmp_path, manifest_text(payload=f"{{blob: {big}}}"))[1:] == (
        7,
        3,
        "$.spec.payload",
        "payload is 65,546 bytes, over the 65,536-byte MQTT limit (spec.payload, shared by the "
        "manifest's devices)",
    )


def test_payload_at_limit_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "m.yaml", manifest_text(payload='"' + "x" * 65_536 + '"'))
    assert load_manifests([tmp_path]).ok


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = load_manifests([tmp_path / "nope", tmp_path / "empty"])
    assert [(Path(d.file).name, d.message) for d in result.diagnostics] == [
        ("nope", "no such file or folder"),
        ("empty", "folder holds no *.yaml or *.yml manifests"),
    ]


def test_non_utf8_file_points_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(manifest_text().encode() + b"# caf\xe9\n")
    (diag,) = load_manifests([path]).diagnostics
    assert (diag.line, diag.column, diag.message) == (9, 6, "file is not valid UTF-8 (byte 0xe9)")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    _, line, _, _, message = only_error(tmp_path, manifest_text(payload="{method: set"))
    assert line == 8
    assert message == (
        "YAML: the '{' opened at line 7, column 12 is not closed (did not find expected ',' or '}')"
    )


def test_python_tags_are_refused(tmp_path: Path) -> None:
    text = manifest_text(payload='!!python/object/apply:os.system ["true"]')
    _, line, _, _, message = only_error(tmp_path, text)
    assert line == 7
    assert "no custom or Python tags" in message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = manifest_text().replace(
        "kind: DeviceConfig\n", "kind: DeviceConfig\nkind: DeviceConfig\n"
    )
    _, line, _, _, message = only_error(tmp_path, text)
    assert line == 3
    assert message == "YAML: duplicate key 'kind' (first at line 2); a mapping holds each key once"


def test_merge_keys_are_not_duplicate_keys(tmp_path: Path) -> None:
    text = manifest_text(payload="{<<: {a: 1, b: 2}, b: 3}")
    write(tmp_path / "m.yaml", text)
    (device,) = load_manifests([tmp_path]).devices
    assert json.loads(device.payload) == {"a": 1, "b": 3}


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert "recursive alias" in only_error(tmp_path, manifest_text(payload="&a [*a]"))[4]


def test_alias_bomb_fails_fast_with_bounded_memory(tmp_path: Path) -> None:
    lines = ["  payload:", '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"    {name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    text = manifest_text().replace("  payload: {method: set, params: {a: 1}}", "\n".join(lines))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    message = only_error(tmp_path, text)[4]
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert "expand to more than 1,000,000 nodes" in message


def test_nan_payload(tmp_path: Path) -> None:
    assert "NaN and infinity" in only_error(tmp_path, manifest_text(payload="{t: .nan}"))[4]


def test_fast_and_full_validators_agree_on_invalid_examples() -> None:
    for path in sorted((EXAMPLES / "invalid").iterdir()):
        result = load_manifests([path])
        assert result.diagnostics, f"{path.name} should be invalid"


@pytest.mark.parametrize("name", ["unknown-key", "bad-product-id", "empty-devices", "missing-name"])
def test_schema_examples_fail_both_validators(name: str) -> None:
    import yaml

    document = yaml.safe_load((EXAMPLES / "invalid" / f"{name}.yaml").read_text())
    assert not manifest._is_valid_fast(document)
    assert list(manifest._full_validator().iter_errors(document))


def test_parallel_loading_gives_the_same_result_as_serial(tmp_path: Path) -> None:
    for index in range(manifest.PARALLEL_MIN_FILES + 6):
        labels = "" if index % 2 else "  labels: {team: a}\n"
        text = manifest_text(f"m{index:03d}", devices=f"[d{index}, e{index}]")
        write(tmp_path / f"f{index:03d}.yaml", text.replace("metadata:\n", "metadata:\n" + labels))
    write(tmp_path / "zz-dup.yaml", manifest_text("dup", devices="[d1]"))
    serial = load_manifests([tmp_path], jobs=1)
    parallel = load_manifests([tmp_path], jobs=2)
    assert parallel.devices == serial.devices
    assert parallel.manifests == serial.manifests
    assert parallel.diagnostics == serial.diagnostics
    assert len(parallel.diagnostics) == 1  # the duplicate found across worker chunks
    assert parallel.files == serial.files == manifest.PARALLEL_MIN_FILES + 7


def test_files_without_any_manifest_are_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "# nothing here yet\n")
    write(tmp_path / "b.yaml", "---\n")
    (diag,) = load_manifests([tmp_path]).diagnostics
    assert (Path(diag.file).name, diag.message) == ("a.yaml", "no manifests found in any file")
