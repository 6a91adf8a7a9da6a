"""Golden files: text, JSON and markdown plans of the example fleet against a mixed state.

Regenerate after an intended change with `RRPCSYNC_UPDATE_GOLDEN=1 pytest tests/test_golden.py`
and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rrpcsync.manifests.loader import load_manifests
from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.state.jsonfile import load_state, save_state

from .helpers import EXAMPLES, run

GOLDEN = Path(__file__).parent / "golden"
AT = "2026-11-28T12:00:00Z"


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """examples/configs in a temp folder, and a state where the devices are in every situation."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXAMPLES / "configs", tmp_path / "configs")
    devices = {d.key: d for d in load_manifests([Path("configs")]).devices}
    state = load_state(tmp_path / "rrpcsync.state.json")
    state.lineage = "00000000-0000-4000-8000-000000000000"
    for key in ("ASBHKN/dev-001", "ASBHKN/dev-003", "ASBHKN/dev-004", "SRN01/siren-a"):
        state.devices[key] = applied(devices[key].payload, devices[key].manifest)
    old = '{"method":"set_config","params":{"display":"温度","interval":15,"unit":"F"}}'
    state.devices["ASBHKN/dev-002"] = applied(old, "thermostats-floor-3")
    offline = ErrorInfo("FailedOperation.DeviceOffline", "device offline", AT)
    state.devices["GW7Q2Z/gw-north"] = DeviceRecord(
        Status.FAILED,
        target_sha256=devices["GW7Q2Z/gw-north"].payload_sha256,
        attempts=1,
        last_error=offline,
        manifest="gateways-beijing",
    )
    state.devices["ASBHKN/dev-099"] = applied('{"method":"set_config"}', "thermostats-floor-3")
    save_state(state)
    return tmp_path


def applied(payload: str, manifest: str) -> DeviceRecord:
    import hashlib

    digest = hashlib.sha256(payload.encode()).hexdigest()
    return DeviceRecord(
        Status.APPLIED, digest, payload, digest, "req", 1, "b2s=", "ok", AT, 1, None, manifest
    )


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RRPCSYNC_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def test_text_plan(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    result = run(capsys, "plan", "configs")
    assert result.code == 0
    check("plan.txt", result.out)


def test_json_plan(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    result = run(capsys, "plan", "configs", "--format", "json")
    doc = json.loads(result.out)
    doc["created_at"] = "(time)"
    check("plan.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def test_markdown_plan(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    result = run(capsys, "plan", "configs", "--format", "markdown")
    check("plan.md", result.out)
