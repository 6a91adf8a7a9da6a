"""Test helpers: run the CLI in-process through its real error boundary."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from rrpcsync.cli import cli, run_guarded

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    capsys.readouterr()
    code = run_guarded(cli, list(args))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def manifest_text(
    name: str = "m1",
    product: str = "P1",
    devices: str = "[d1]",
    payload: str = "{method: set, params: {a: 1}}",
) -> str:
    return (
        "apiVersion: rrpcsync/v1\n"
        "kind: DeviceConfig\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  productId: {product}\n"
        f"  payload: {payload}\n"
        f"  devices: {devices}\n"
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
