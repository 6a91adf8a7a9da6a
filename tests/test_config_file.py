"""The project config file rrpcsync.toml: settings, environments, precedence, errors,
`rrpcsync config`, and `exclude` keeping other YAML out of the manifests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.cli.settings_file import SETTINGS, key_lines, load_config
from rrpcsync.errors import UsageError

from .helpers import ROOT, manifest_text, run, write

DOC = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
DOCUMENTED = re.findall(r"^\| `([a-z.-]+)` \|", DOC, flags=re.M)
SAMPLE = {  # a valid value of each type
    "paths": '["configs"]',
    "exclude": '["k8s/*"]',
    "state": '"s.json"',
    "site": '"china"',
    "endpoint": '"http://127.0.0.1:8080/"',
    "rate": "5",
    "parallelism": "4",
    "timeout": "2.5",
    "retries": "1",
    "max-sends": "100",
    "rollout.canary": "2",
    "rollout.waves": '[1, "10%"]',
    "rollout.max-failures": "0",
    "rollout.max-failure-rate": "2.5",
    "rollout.min-sample": "5",
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2, d3]"))
    return tmp_path


def config_file(folder: Path, text: str) -> Path:
    path = folder / "rrpcsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, env: str | None = None) -> str:
    with pytest.raises(UsageError) as caught:
        load_config(path, env)
    return str(caught.value)


def test_every_documented_setting_is_accepted_and_no_other(tmp_path: Path) -> None:
    assert sorted(DOCUMENTED) == sorted(s.key for s in SETTINGS)
    assert sorted(SAMPLE) == sorted(DOCUMENTED)
    for key in DOCUMENTED:
        for section in ("", "[env.prod]\n"):
            path = config_file(tmp_path, f"{section}{key} = {SAMPLE[key]}\n")
            loaded = load_config(path, "prod" if section else None)
            assert key in loaded.values, key
    assert "rate" in load_config(config_file(tmp_path, 'rate = "auto"\n'), None).values
    for key in ("color", "access-token", "token", "rollout.wave", "max_sends", "verbose", "prune"):
        path = config_file(tmp_path, f"\n{key} = 1\n")
        assert f"{path}:2: unknown setting {key}" in error_of(path), key


def test_wrong_types_name_the_file_and_line(tmp_path: Path) -> None:
    bad = {
        "rate": '"fast"',
        "parallelism": "0",
        "retries": "true",
        "paths": '"configs"',
        "timeout": "0",
        "rollout.waves": "[true]",
        "state": "3",
        "site": '"mars"',
    }
    for key, value in bad.items():
        path = config_file(tmp_path, f"# a comment\n\n{key} = {value}\n")
        message = error_of(path)
        assert message.startswith(f"{path}:3: {key} must be "), message
        assert "True" not in message and "None" not in message
    path = config_file(tmp_path, 'rate = 1\n[env.ci]\nparallelism = "many"\n')
    assert error_of(path).startswith(f"{path}:3: [env.ci] parallelism must be a whole number")


def test_unknown_keys_suggest_the_closest_and_syntax_errors_have_a_place(tmp_path: Path) -> None:
    path = config_file(tmp_path, "paths = [\n  'a',\n  'b',\n]\n[env.prod]\nrat = 5\n")
    assert (
        error_of(path, "prod") == f"{path}:6: unknown setting [env.prod] rat; did you mean 'rate'?"
    )
    path = config_file(tmp_path, "[rollout]\ncanery = 2\n")
    assert "rrpcsync.toml:2: unknown setting rollout.canery; did you mean 'rollout.canary'?" in (
        error_of(path)
    )
    path = config_file(tmp_path, "rate = 5\nstate = = 1\ntimeout = 3\n")
    assert re.match(rf"{re.escape(str(path))}:2:\d+: invalid TOML: ", error_of(path))
    path = config_file(tmp_path, "[env.a]\nrate = 1\n[env.b]\nrate = 2\n")
    assert error_of(path, "c") == f"{path}: no [env.c] section (sections: a, b)"


def test_key_lines_skip_multiline_arrays_and_strings() -> None:
    text = (
        'paths = [\n  "x = 1",\n]\nendpoint = """\nrate = 9\n"""\n'
        "[rollout]\ncanary = 1\n[env.prod]\nrollout.waves = [1]\n"
    )
    lines = key_lines(text)
    assert lines[("paths",)] == 1
    assert ("x",) not in lines and ("rate",) not in lines
    assert lines[("endpoint",)] == 4
    assert lines[("rollout", "canary")] == 8
    assert lines[("env", "prod", "rollout", "waves")] == 10


def test_precedence_is_flag_then_env_var_then_config_then_default(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def source(key: str, *args: str) -> tuple[Any, str]:
        doc = json.loads(run(capsys, *args, "config", "--format", "json").out)
        found = doc["settings"][key]
        return found["value"], found["source"]

    assert source("state") == ("rrpcsync.state.json", "default")
    config_file(project, 'state = "from-config.json"\n[env.prod]\nstate = "prod.json"\n')
    assert source("state") == ("from-config.json", f"{project / 'rrpcsync.toml'}:1")
    assert source("state", "--env", "prod") == (
        "prod.json",
        f"{project / 'rrpcsync.toml'}:3 [env.prod]",
    )
    monkeypatch.setenv("RRPCSYNC_ENV", "prod")
    assert source("state")[0] == "prod.json"
    monkeypatch.setenv("RRPCSYNC_STATE", "from-env.json")
    assert source("state") == ("from-env.json", "env RRPCSYNC_STATE")
    # what the commands really use: the listing names the file it read
    for name in ("from-config.json", "prod.json", "from-env.json", "flag.json"):
        (project / name).write_text(
            json.dumps(
                {
                    "format": "rrpcsync-state",
                    "version": 1,
                    "lineage": name,
                    "serial": 7,
                    "devices": {},
                }
            ),
            "utf-8",
        )

    def serial_line(*args: str) -> str:
        return run(capsys, *args).err_lines[-1]

    monkeypatch.delenv("RRPCSYNC_STATE")
    monkeypatch.delenv("RRPCSYNC_ENV")
    doc = json.loads(run(capsys, "state", "list", "--format", "json").out)
    assert doc["lineage"] == "from-config.json"
    doc = json.loads(run(capsys, "state", "list", "--format", "json", "--env", "prod").out)
    assert doc["lineage"] == "prod.json"
    monkeypatch.setenv("RRPCSYNC_STATE", "from-env.json")
    doc = json.loads(run(capsys, "--env", "prod", "state", "list", "--format", "json").out)
    assert doc["lineage"] == "from-env.json"
    doc = json.loads(run(capsys, "state", "list", "--state", "flag.json", "--format", "json").out)
    assert doc["lineage"] == "flag.json"
    assert serial_line("state", "list", "--state", "flag.json").endswith("(serial 7)")


def test_config_is_found_in_parents_and_its_paths_are_relative_to_it(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file(project, 'paths = ["configs"]\nstate = "team.state.json"\nrate = 7\n')
    (project / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(project / "deep" / "er")
    result = run(capsys, "validate")
    assert result.code == 0, result.err
    assert result.err_lines[-1] == "valid: 1 file(s), 1 manifest(s), 3 device(s)"
    doc = json.loads(run(capsys, "config", "--format", "json").out)
    assert doc["settings"]["state"]["value"] == "../../team.state.json"
    assert doc["settings"]["rate"] == {"value": 7, "source": f"{project / 'rrpcsync.toml'}:3"}
    assert doc["settings"]["timeout"] == {"value": 15.0, "source": "default"}


def test_config_command_lists_every_setting_with_its_source(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    config_file(project, "rate = 3\n[rollout]\nwaves = [1, '10%']\n")
    result = run(capsys, "config")
    assert result.code == 0, result.err
    header, *rows = result.out_lines
    assert header.split() == ["SETTING", "VALUE", "SOURCE"]
    assert [row.split()[0] for row in rows] == [s.key for s in SETTINGS]
    by_key = {row.split()[0]: row.split(maxsplit=2)[1:] for row in rows}
    assert by_key["rate"] == ["3", f"{project / 'rrpcsync.toml'}:1"]
    assert by_key["rollout.waves"] == ["1,10%", f"{project / 'rrpcsync.toml'}:3"]
    assert by_key["retries"] == ["3", "default"]
    assert result.err_lines[-1] == f"config file: {project / 'rrpcsync.toml'}"


def test_exclude_keeps_other_yaml_out_of_the_manifests(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    write(project / "configs" / "k8s" / "deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\n")
    write(project / "configs" / "ci.gitlab-ci.yml", "stages: [test]\n")
    assert run(capsys, "validate").code == 1
    config_file(project, 'exclude = ["k8s/*", "*.gitlab-ci.yml"]\n')
    result = run(capsys, "validate")
    assert result.code == 0, result.err
    assert "valid: 1 file(s)" in result.err
    assert run(capsys, "validate", "configs/k8s/deploy.yaml").code == 1  # named: always read
    assert run(capsys, "plan").code == 0
    flag = run(capsys, "validate", "--exclude-files", "nothing")  # a flag replaces the config
    assert flag.code == 1


def test_config_rollout_and_sending_settings_reach_apply(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "emulator-token")
    config_file(project, "[rollout]\ncanary = 1\nwaves = ['50%']\n")
    shown = run(capsys, "apply")  # no terminal: shows the plan, then refuses
    assert shown.code == 1
    assert "Canary: 1 device(s): P1/d1" in shown.out
    assert "Waves: 2 wave(s) of 1, 1 device(s)" in shown.out
    flagged = run(capsys, "apply", "--canary", "2")
    assert "Canary: 2 device(s): P1/d1, P1/d2" in flagged.out
    config_file(project, "parallelism = 5000\n")
    refused = run(capsys, "plan")
    assert refused.code == 1
    assert "rrpcsync.toml:1: parallelism must be a whole number of at least 1 and at most 1000" in (
        refused.err
    )


def test_site_reaches_the_login_options(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file(project, 'site = "overseas"\n')
    doc = json.loads(run(capsys, "config", "--format", "json").out)
    assert doc["settings"]["site"] == {
        "value": "overseas",
        "source": f"{project / 'rrpcsync.toml'}:1",
    }
    monkeypatch.setenv("RRPCSYNC_SITE", "china")
    doc = json.loads(run(capsys, "config", "--format", "json").out)
    assert doc["settings"]["site"] == {"value": "china", "source": "env RRPCSYNC_SITE"}
    assert doc["settings"]["max-sends"]["source"] == "default"  # apply has --max-sends


def test_max_sends_reaches_apply(
    capsys: pytest.CaptureFixture[str],
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "emulator-token")
    config_file(project, "max-sends = 2\n")
    refused = run(capsys, "apply", "--auto-approve")
    assert refused.code == 1
    assert "--max-sends" in refused.err
    assert emu.stats()["log"] == []
    assert run(capsys, "apply", "--auto-approve", "--max-sends", "3").code == 0
