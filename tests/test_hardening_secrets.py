"""Secrets and credentials (issue 14): every encoding masked, redaction before cleaning,
credentials in endpoint URLs, token text checked before anything is sent or journaled."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rrpcsync import secrets
from rrpcsync.cloud.login import resolve_auth
from rrpcsync.cloud.results import SNIPPET_CHARS, clean_text, parse_response, redact
from rrpcsync.cloud.settings import check_endpoint, resolve_token, shown_url
from rrpcsync.errors import ConfigError

from .helpers import manifest_text, run, write

NASTY = 'p"a\\ss\nwö\trd-€-\x01"}'  # quotes, backslashes, control chars, non-ASCII
TOKEN = "emulator-token"


def every_encoding(value: str) -> list[str]:
    raw = value.encode("utf-8")
    return [
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(json.dumps(value))[1:-1],
        base64.b64encode(raw).decode()[:-4],
        base64.b64encode(b"x" + raw).decode()[4:-4],
        base64.b64encode(b"xy" + raw).decode()[4:-4],
    ]


# --------------------------------------------------------------------------- every encoding


def test_each_encoding_of_a_nasty_secret_is_masked() -> None:
    for text in [
        json.dumps({"password": NASTY}),
        json.dumps({"password": NASTY}, ensure_ascii=False),
        json.dumps(json.dumps({"password": NASTY})),
        repr(NASTY),
    ]:
        shown = redact(text, [NASTY])
        assert "***" in shown
        for form in every_encoding(NASTY)[:4]:
            assert form not in shown, (text, form)


def decodes_to_secret(shown: str, secret: str) -> bool:
    """Whether `shown` still yields the secret when decoded as the encoding it came in."""
    text = shown
    for _ in range(2):
        try:
            text = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            break
        if isinstance(text, str) and secret in text:
            return True
        if isinstance(text, dict):
            text = text.get("v", "")
    try:
        raw = base64.b64decode(shown, validate=True)
    except (binascii.Error, ValueError):
        return secret in shown
    return secret.encode() in raw or secret in shown


secret_text = st.text(min_size=6, max_size=24).filter(lambda s: s.strip() == s and "***" not in s)


@settings(max_examples=150, deadline=None)
@given(secret=secret_text, before=st.text(max_size=5), after=st.text(max_size=5))
def test_fuzz_no_encoding_of_a_secret_survives(secret: str, before: str, after: str) -> None:
    value = before + secret + after
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return  # not text a payload or a token can hold (refused before use)
    encoded = [
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        json.dumps(json.dumps({"v": value})),
        base64.b64encode(raw).decode(),
    ]
    for text in encoded:
        shown = redact(text, [secret])
        assert not decodes_to_secret(shown, secret), (text, shown)


# --------------------------------------------------------------------------- redact before clean


def error_body(message: str) -> bytes:
    return json.dumps(
        {"Response": {"Error": {"Code": "InvalidParameter", "Message": message}}}
    ).encode()


def test_a_token_with_a_newline_is_redacted_before_the_message_is_cleaned() -> None:
    token = "tok-first-half\nsecond-half-9f8e"
    secrets.register(token)
    result = parse_response(200, {}, error_body(f"bad token {token} given"), "r1")
    assert result.message is not None
    assert "first-half" not in result.message and "second-half" not in result.message
    assert result.message == "bad token *** given"


def test_a_token_cut_by_the_length_limit_leaves_no_prefix() -> None:
    token = "tok-" + "7" * 60 + "-end"
    secrets.register(token)
    message = "x" * (SNIPPET_CHARS - 20) + " " + token
    result = parse_response(200, {}, error_body(message), "r1")
    assert result.message is not None
    assert "7777" not in result.message
    assert "7777" not in clean_text(message)
    html = f"<html><body>{'y' * 190} {token}</body></html>".encode()
    page = parse_response(502, {}, html, "r2")
    assert page.message is not None and "7777" not in page.message


def test_the_login_helpers_values_are_masked_once_registered() -> None:
    app_secret = 'AppSecret"with\\quotes-42'
    secrets.register(app_secret)
    text = json.dumps({"AppSecret": app_secret})
    assert app_secret not in redact(text, []) and json.dumps(app_secret)[1:-1] not in clean_text(
        text
    )


# --------------------------------------------------------------------------- endpoints


def test_credentials_with_control_characters_are_refused_naming_the_source() -> None:
    env = {
        "RRPCSYNC_APP_KEY": "key-1",
        "RRPCSYNC_APP_SECRET": "secret\x1b]0;x",
        "RRPCSYNC_USER": "user@example.com",
        "RRPCSYNC_PASSWORD": "pw",
    }
    with pytest.raises(ConfigError) as caught:
        resolve_auth(env)
    assert "RRPCSYNC_APP_SECRET" in str(caught.value) and "secret" not in str(caught.value)[:8]
    assert "\x1b" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@127.0.0.1:8080/api",
        "https://user:hunter2@iot.example.com/api",
        "https://hunter2@iot.example.com/api",
    ],
)
def test_an_endpoint_with_userinfo_is_refused_without_printing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_endpoint(url, allow_insecure=True)
    message = str(caught.value)
    assert "user name or password" in message
    assert "hunter2" not in message and "user:hunter2" not in message


def test_an_insecure_endpoint_message_hides_the_query_string() -> None:
    url = "http://iot.example.com/api?sig=hunter2#frag"
    with pytest.raises(ConfigError) as caught:
        check_endpoint(url, allow_insecure=False)
    assert "hunter2" not in str(caught.value) and "frag" not in str(caught.value)
    assert "http://iot.example.com/api" in str(caught.value)
    (warning,) = check_endpoint(url, allow_insecure=True)
    assert "hunter2" not in warning
    assert shown_url("http://[::1]:99/p?q=1") == "http://[::1]:99/p"


def test_apply_with_userinfo_in_the_endpoint_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    url = "http://admin:hunter2@127.0.0.1:1/api"
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", url)
    assert result.code == 1
    assert [line for line in result.err_lines if line.startswith("error:")] == result.err_lines[-1:]
    assert "hunter2" not in result.out + result.err
    assert "Traceback" not in result.err


# --------------------------------------------------------------------------- token text


@pytest.mark.parametrize("token", ["abc\x07def", "abc\x1b]0;x\x07", "tok\udcffen"])
def test_a_bad_token_is_refused_before_anything_is_journaled(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
    token: str,
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", token)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    result = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 1
    assert "RRPCSYNC_ACCESS_TOKEN" in result.err
    assert [line for line in result.err_lines if line.startswith("error:")] == result.err_lines[-1:]
    assert not list(tmp_path.glob("*.journal"))
    assert not (tmp_path / "rrpcsync.state.json").exists()
    assert emu.stats()["requests_total"] == 0


def test_a_token_file_readable_by_others_gets_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "token", "tok-from-file\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="rrpcsync"):
        assert resolve_token({}, str(path)) == "tok-from-file"
    assert f"access token file {path} is accessible by group or others" in caplog.text
    assert "tok-from-file" not in caplog.text
    auth = resolve_auth({}, token_file=str(path))
    assert any("access token file" in note and "accessible" in note for note in auth.notes)
    caplog.clear()
    os.chmod(path, 0o600)
    assert not resolve_auth({}, token_file=str(path)).notes
    with caplog.at_level(logging.WARNING, logger="rrpcsync"):
        resolve_token({}, str(path))
    assert "accessible" not in caplog.text


# --------------------------------------------------------------------------- end to end


def test_a_nasty_secret_never_leaks_in_logs_or_files(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "echo"}}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("NASTY", NASTY)
    payload = "{method: set, params: {password: '${env:NASTY}'}}"
    write(tmp_path / "configs" / "m.yaml", manifest_text(payload=payload))
    result = run(capsys, "-vv", "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert result.code == 0, result.err
    shown = run(capsys, "state", "show", "P1/d1")
    texts = [result.out, result.err, shown.out, shown.err]
    texts += [p.read_text("utf-8") for p in tmp_path.glob("rrpcsync.state.json*")]
    for text in texts:
        for form in every_encoding(NASTY):
            assert form not in text, form
    acked = emu.stats()["per_device"]["P1/d1"]["acked"]
    assert json.loads(acked[0])["params"]["password"] == NASTY  # the device got it
