"""Manifests parsed in worker processes: an error in the state load while they run ends the
command at once with its one-line error (no hang, no worker tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rrpcsync.manifests.loader import PARALLEL_MIN_FILES

MANIFEST = """apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata: {{name: m{n}}}
spec:
  productId: P1
  payload: {{a: 1}}
  devices: [d{n}]
"""


def test_a_bad_state_while_workers_parse_fails_cleanly(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for n in range(PARALLEL_MIN_FILES + 36):  # enough files for the worker processes
        (configs / f"m{n:03d}.yaml").write_text(MANIFEST.format(n=n), encoding="utf-8")
    (tmp_path / "s.json").write_text('{"format": "rrpcsync-state", "version": 1}\n')
    for _ in range(3):  # the hang depended on timing: the workers' state when terminated
        done = subprocess.run(
            [sys.executable, "-m", "rrpcsync", "plan", "configs", "--state", "s.json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert done.stderr == "error: s.json: missing field 'devices'\n"
