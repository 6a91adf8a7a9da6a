"""Logging in during real runs: the CLI and the library against the emulator's AppGetToken,
with tokens that expire mid-run, a re-login that fails, and no secret in any output or file."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rrpcsync import api
from rrpcsync.cloud.login import AppLogin, Credentials, User
from rrpcsync.emulator import Emulator
from rrpcsync.run.executor import ApplyOptions
from rrpcsync.state.jsonfile import load_state
from tests.conftest import StartEmulator

from .helpers import manifest_text, run, write

APP_KEY = "app-key-4f1c"
APP_SECRET = "Xq7-app-SECRET-93kd"
EMAIL = "robot@example.com"
PASSWORD = "Pa$$-w0rd-robot-771"
DEVICES = 200
CREDENTIALS_ENV = {
    "RRPCSYNC_APP_KEY": APP_KEY,
    "RRPCSYNC_APP_SECRET": APP_SECRET,
    "RRPCSYNC_USER": EMAIL,
    "RRPCSYNC_PASSWORD": PASSWORD,
}


def fleet(lifetime: float = 3600, **login: Any) -> dict[str, Any]:
    return {
        "token": None,
        "products": {"P1": {"count": DEVICES}},
        "default": {"reply": "echo", "latency": 0.02},
        "login": {
            "app_key": APP_KEY,
            "app_secret": APP_SECRET,
            "token_lifetime": lifetime,
            "users": [{"email": EMAIL, "password": PASSWORD}],
            **login,
        },
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, value in CREDENTIALS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("RRPCSYNC_ACCESS_TOKEN", "RRPCSYNC_SITE", "RRPCSYNC_LOGIN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    names = ", ".join(f"dev-{n:03d}" for n in range(1, DEVICES + 1))
    payload = "{method: set_config, params: {interval: 30}}"
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices=f"[{names}]", payload=payload))
    return tmp_path


def acks(emu: Emulator) -> Counter[str]:
    """How many payloads each device accepted."""
    per_device = emu.stats(include_log=False)["per_device"]
    return Counter({key: len(device["acked"]) for key, device in per_device.items()})


def applied_keys(workdir: Path) -> set[str]:
    state = load_state(workdir / "rrpcsync.state.json")
    return {key for key, record in state.devices.items() if record.status.value == "applied"}


def test_apply_with_tokens_that_expire_every_2_s(
    capsys: pytest.CaptureFixture[str], workdir: Path, emulator: StartEmulator
) -> None:
    emu = emulator(fleet(lifetime=2))
    started = time.monotonic()
    result = run(
        capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url, "--rate", "60",
        "--parallelism", "20",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert time.monotonic() - started > 2.5  # the run outlived its first token
    assert acks(emu) == Counter({f"P1/dev-{n:03d}": 1 for n in range(1, DEVICES + 1)})
    assert emu.stats()["login"]["logins"] >= 2
    assert len(applied_keys(workdir)) == DEVICES


def test_refused_tokens_are_renewed_and_their_requests_sent_again(
    workdir: Path, emulator: StartEmulator
) -> None:
    """The client's clock is 250 s behind: ExpireAt looks far away, so only the cloud's
    refusals (InvalidAccessToken) trigger the logins. Refused requests never reached a
    device; they are sent again, neither failures nor retries."""
    emu = emulator(fleet(lifetime=1))
    credentials = Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), PASSWORD)
    tokens = AppLogin(credentials, emu.login_url, clock=lambda: time.time() - 250)
    applied = api.apply_manifests(
        ["configs"],
        api.open_store("rrpcsync.state.json"),
        connection=api.Connection(endpoint=emu.url, tokens=tokens),
        sending=ApplyOptions(parallelism=20, rate=100, retries=0),
    )
    report = applied.report
    assert report is not None and report.fatal is None and not report.failed
    assert len(report.applied) == DEVICES
    assert acks(emu) == Counter({f"P1/dev-{n:03d}": 1 for n in range(1, DEVICES + 1)})
    codes = Counter(entry["code"] for entry in emu.stats()["log"])
    assert codes["InvalidParameterValue.InvalidAccessToken"] >= 1
    assert (
        tokens.logins >= 2
        and report.requests == DEVICES + codes["InvalidParameterValue.InvalidAccessToken"]
    )
    state = load_state(workdir / "rrpcsync.state.json")
    assert {record.attempts for record in state.devices.values()} == {1}


def test_a_relogin_that_fails_mid_run_is_fatal_and_loses_nothing(
    capsys: pytest.CaptureFixture[str], workdir: Path, emulator: StartEmulator
) -> None:
    emu = emulator(fleet(lifetime=2, logins_allowed=1))
    args = ["apply", "configs", "--auto-approve", "--endpoint", emu.url, "--rate", "60"]
    result = run(capsys, *args, "--parallelism", "20")
    assert result.code == 1
    assert result.err_lines[-1] == (
        "error: login failed (InternalError: InvalidParameterValue.UserLoginFailed|用户登录失败); "
        "check RRPCSYNC_USER and RRPCSYNC_PASSWORD"
    )
    first = acks(emu)
    assert 0 < sum(first.values()) < DEVICES and set(first.values()) <= {0, 1}
    # nothing lost: every payload a device accepted is recorded as applied, with its reply
    assert applied_keys(workdir) == {key for key, count in first.items() if count}
    # the next run (the password works again) sends exactly the rest
    emu.configure({"login": fleet()["login"]})
    assert run(capsys, *args).code == 0
    assert acks(emu) == Counter({f"P1/dev-{n:03d}": 1 for n in range(1, DEVICES + 1)})


def test_wrong_password_is_fatal_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator(fleet())
    monkeypatch.setenv("RRPCSYNC_PASSWORD", "not-the-password")
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert result.err_lines[-1].endswith("check RRPCSYNC_USER and RRPCSYNC_PASSWORD")
    assert emu.stats()["requests_total"] == 0 and sum(acks(emu).values()) == 0
    assert "not-the-password" not in result.out + result.err


def test_login_command(
    capsys: pytest.CaptureFixture[str], workdir: Path, emulator: StartEmulator
) -> None:
    emu = emulator(fleet())
    before = time.time()
    result = run(capsys, "login", "--endpoint", emu.url)
    assert result.code == 0, result.err
    first, second = result.out_lines
    assert first == f"logged in as {EMAIL} at {emu.url}appapi"
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(before) + 3600))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(time.time()) + 3600))
    assert second.startswith("token valid until ") and second[18:38] in (utc, later)
    assert second.endswith(")") and " (" in second
    assert emu.issued_tokens()[0] not in result.out + result.err


def test_login_command_errors(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator(fleet())
    monkeypatch.setenv("RRPCSYNC_APP_SECRET", "not-the-secret")
    result = run(capsys, "login", "--login-endpoint", emu.login_url)
    assert result.code == 1
    assert result.err_lines == [
        "error: login failed (InvalidParameterValue.SignatureFailure: the Signature does not "
        "match the parameters); check RRPCSYNC_APP_SECRET"
    ]
    for name in CREDENTIALS_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "a-static-token")
    static = run(capsys, "login", "--endpoint", emu.url)
    assert static.code == 1 and "nothing to log in with" in static.err
    assert run(capsys, "login", "--site", "mars").code == 1


def test_credentials_file_and_verbose_source(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator(fleet())
    for name in CREDENTIALS_ENV:
        monkeypatch.delenv(name)
    creds = workdir / "ops.env"
    creds.write_text("".join(f"{k}={v}\n" for k, v in CREDENTIALS_ENV.items()))
    creds.chmod(0o644)
    result = run(capsys, "-v", "login", "--credentials-file", "ops.env", "--endpoint", emu.url)
    assert result.code == 0, result.err
    assert result.err_lines[0] == (
        "warning: credentials file ops.env is accessible by group or others (mode 0644); "
        "run chmod 600 ops.env"
    )
    assert (
        f"credentials: --credentials-file ops.env (log in as {EMAIL} at {emu.url}appapi)"
        in result.err
    )


def test_a_static_token_still_works_and_says_so(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator({**fleet(), "token": "static-tok"})
    for name in CREDENTIALS_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "static-tok")
    args = ["apply", "configs", "--auto-approve", "--endpoint", emu.url, "--rate", "1000"]
    result = run(capsys, "-v", *args)
    assert result.code == 0, result.err
    assert "credentials: environment (RRPCSYNC_ACCESS_TOKEN) (a static access token)" in result.err
    assert emu.stats()["login"]["logins"] == 0


def test_a_static_token_that_expires_is_fatal_with_a_hint(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator({**fleet(), "token": "static-tok", "token_expired": True})
    for name in CREDENTIALS_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "static-tok")
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert result.err_lines[-1].endswith("or let rrpcsync log in itself (docs/auth.md)")


# --------------------------------------------------------------------------- leaks


def encodings(secret: str) -> list[bytes]:
    """The secret as bytes in the forms it could be written in: raw, JSON-escaped,
    URL-encoded, hex, and base64 at each of the three alignments."""
    raw = secret.encode()
    forms = {raw, json.dumps(secret)[1:-1].encode(), urllib.parse.quote(secret).encode()}
    forms |= {urllib.parse.quote_plus(secret).encode(), raw.hex().encode()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)[4 if pad else 0 :]
        forms.add(encoded[:-4])  # the last group depends on what follows
    return sorted(forms)


def test_a_verbose_run_that_logged_in_leaks_nothing(
    capsys: pytest.CaptureFixture[str], workdir: Path, emulator: StartEmulator
) -> None:
    emu = emulator(fleet(lifetime=2))
    outputs: list[str] = []

    def step(*args: str) -> None:
        result = run(capsys, "-v", *args)
        assert result.code in (0, 2), result.err
        outputs.extend([result.out, result.err])

    step("login", "--endpoint", emu.url)
    step("plan", "configs", "--out", "plan.json", "--out-markdown", "plan.md", "--format", "json")
    step("apply", "plan.json", "--auto-approve", "--endpoint", emu.url, "--rate", "80",
         "--parallelism", "20", "--format", "json")  # fmt: skip
    write(workdir / "configs" / "m.yaml", manifest_text(devices="[dev-001]", payload="{a: 2}"))
    step("apply", "configs", "--auto-approve", "--endpoint", emu.url, "--prune")
    step("state", "list")
    step("state", "show", "P1/dev-001")
    step("plan", "configs", "--detailed-exitcode", "--format", "markdown")
    assert "login: logged in as robot@example.com" in "".join(outputs)  # -v shows the login
    assert '"AccessToken": "***"' in "".join(outputs)  # and the masked requests
    tokens = emu.issued_tokens()
    assert len(tokens) >= 3  # login, and the apply's renewals
    files = [path for path in workdir.rglob("*") if path.is_file()]
    assert {"rrpcsync.state.json", "plan.json", "plan.md"} <= {path.name for path in files}
    blobs = [text.encode() for text in outputs] + [path.read_bytes() for path in files]
    for secret in (PASSWORD, APP_SECRET, *tokens):
        for form in encodings(secret):
            for blob in blobs:
                assert form not in blob, (secret[:3], form)


def test_drift_probes_renew_refused_tokens_too(workdir: Path, emulator: StartEmulator) -> None:
    names = ", ".join(f"dev-{n:03d}" for n in range(1, DEVICES + 1))
    probed = manifest_text(devices=f"[{names}]", payload="{method: set_config, params: {a: 1}}")
    probe = "  probe: {payload: {method: get_config}, pointer: /config}\n"
    write(workdir / "configs" / "m.yaml", probed + probe)
    emu = emulator({**fleet(lifetime=1), "default": {"reply": {"code": 0}, "latency": 0.02}})
    store = api.open_store("rrpcsync.state.json")
    sending = ApplyOptions(parallelism=20, rate=100, retries=0)
    first = api.apply_manifests(
        ["configs"], store, connection=api.Connection(endpoint=emu.url), sending=sending
    )
    assert first.report is not None and len(first.report.applied) == DEVICES
    emu.reset()
    credentials = Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), PASSWORD)
    tokens = AppLogin(credentials, emu.login_url, clock=lambda: time.time() - 250)
    connection = api.Connection(endpoint=emu.url, tokens=tokens)
    planned = api.check_drift(["configs"], store, connection=connection, sending=sending)
    summary = planned.plan.summary
    assert (summary.probed, summary.unreachable, summary.to_send) == (DEVICES, 0, 0)
    codes = Counter(entry["code"] for entry in emu.stats()["log"])
    assert codes["InvalidParameterValue.InvalidAccessToken"] >= 1 and tokens.logins >= 2
    assert codes["OK"] == DEVICES  # every device answered its probe once


def test_a_request_refused_again_and_again_becomes_fatal() -> None:
    from rrpcsync.cloud.classify import ErrorClass
    from rrpcsync.cloud.results import failure
    from rrpcsync.run.executor import MAX_RESENDS, resend_class

    refused = failure("rid", "InvalidParameterValue.InvalidAccessToken", "the token is invalid")
    resend = dataclasses.replace(refused, error_class=ErrorClass.RESEND)
    assert resend_class(resend, MAX_RESENDS - 1).error_class is ErrorClass.RESEND
    assert resend_class(resend, MAX_RESENDS).error_class is ErrorClass.FATAL
    assert resend_class(refused, MAX_RESENDS) is refused
