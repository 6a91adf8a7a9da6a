"""docs/library.md: its example runs as written, against the emulator on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from rrpcsync import api
from rrpcsync.errors import ManifestError

from .conftest import StartEmulator
from .helpers import EXAMPLES, ROOT


def library_example() -> str:
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/library.md lost its example"
    return match[1]


def test_the_documented_example_runs(tmp_path: Path, emulator: StartEmulator) -> None:
    emu = emulator({"auto_devices": True})
    script = tmp_path / "example.py"
    script.write_text(library_example(), encoding="utf-8")
    state = tmp_path / "state.json"
    result = subprocess.run(
        [sys.executable, str(script), str(EXAMPLES / "configs"), str(state), emu.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    declared = len(api.validate_manifests([str(EXAMPLES / "configs")]).devices)
    assert lines[0] == f"to send: {declared}"
    assert f"applied: {declared} failed: 0" in lines
    assert lines[-2:] == ["to send after apply: 0", "current: 100.0% runs: 1"]
    assert emu.stats()["requests_total"] == declared  # each payload sent once
    saved = json.loads(state.read_text(encoding="utf-8"))
    assert len(saved["devices"]) == declared
    assert (tmp_path / "state.json.history").exists()  # the run was recorded


def test_validate_raises_with_every_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: nope\n", encoding="utf-8")
    try:
        api.validate_manifests([str(tmp_path)])
    except ManifestError as error:
        assert error.diagnostics and error.exit_code == 1
    else:
        raise AssertionError("invalid manifests were accepted")


def test_apply_records_a_run_in_the_history(tmp_path: Path, emulator: StartEmulator) -> None:
    emu = emulator({"auto_devices": True})
    store = api.open_store(str(tmp_path / "s.json"))
    connection = api.Connection(endpoint=emu.url, env={"RRPCSYNC_ACCESS_TOKEN": "emulator-token"})
    applied = api.apply_manifests([str(EXAMPLES / "configs")], store, connection=connection)
    assert applied.report is not None
    (run,) = store.runs()
    assert run.command == "apply"
    assert run.applied == len(applied.report.applied) == run.counts["applied"]
    assert run.failed == 0 and run.started_at <= run.finished_at
    nothing = api.apply_manifests([str(EXAMPLES / "configs")], store, connection=connection)
    assert nothing.report is None and len(store.runs()) == 1  # a no-op run writes nothing
