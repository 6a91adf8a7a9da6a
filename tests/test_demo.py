"""`rrpcsync demo`: the whole loop offline against the emulator, including the inventory fleet."""

from __future__ import annotations

import pytest

from .helpers import run


def test_demo_runs_offline_and_each_edit_sends_one_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RRPCSYNC_ENDPOINT", raising=False)
    result = run(capsys, "demo")
    assert result.code == 0, result.err[-2000:]
    lines = result.out_lines
    assert "valid: 4 file(s), 5 manifest(s), 23 device(s)" in result.err
    assert "# the emulator received 23 request(s): one per device" in lines
    assert "# requests since the first apply: 0" in lines
    assert lines.count("# the edit sent exactly 1 message(s)") == 2
    assert "MTR01/meter-0005  (fleet/inventory/meters.csv:6)" in lines
    assert (
        "  ~ MTR01/meter-0002  (fleet/inventory/meters.csv:3; overrides fleet/meters.yaml:16)"
        in [line.split("  deferred until")[0] for line in lines]
    )
