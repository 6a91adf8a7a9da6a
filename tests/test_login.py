"""rrpcsync.cloud.login: the signer, credential sources, endpoints, and AppLogin against the
emulator's AppGetToken (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from rrpcsync.cloud.login import (
    AppLogin,
    Check,
    Credentials,
    LoginAuth,
    LoginError,
    StaticAuth,
    StaticToken,
    User,
    login_once,
    login_request,
    login_sibling,
    resolve_auth,
    resolve_endpoints,
    sign,
    string_to_sign,
)
from rrpcsync.emulator import Emulator
from rrpcsync.errors import ConfigError
from tests.conftest import StartEmulator

APP_KEY = "ahPxdK-app-key"
APP_SECRET = "sEcReT-NjIzMz-AppSecret"
EMAIL = "ops@example.com"
PASSWORD = "pa55-W0rd-zeta"
PHONE_PASSWORD = "phone-pa55-omega"

FLEET_LOGIN = {
    "app_key": APP_KEY,
    "app_secret": APP_SECRET,
    "token_lifetime": 600,
    "users": [
        {"email": EMAIL, "password": PASSWORD},
        {"country_code": "86", "phone_number": "13900000000", "password": PHONE_PASSWORD},
    ],
}
CREDENTIALS = Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), PASSWORD)
FOUR = {
    "RRPCSYNC_APP_KEY": APP_KEY,
    "RRPCSYNC_APP_SECRET": APP_SECRET,
    "RRPCSYNC_USER": EMAIL,
    "RRPCSYNC_PASSWORD": PASSWORD,
}


@pytest.fixture
def emu(emulator: StartEmulator) -> Emulator:
    return emulator({"token": None, "auto_devices": True, "login": FLEET_LOGIN})


def app_login(emu: Emulator, credentials: Credentials = CREDENTIALS, **kw: Any) -> AppLogin:
    return AppLogin(credentials, emu.login_url, backoff=0.0, **kw)


def publish_code(emu: Emulator, token: str, device: str = "d1") -> str:
    body = {
        "Action": "AppPublishRRPCMessage",
        "RequestId": str(uuid.uuid4()),
        "AccessToken": token,
        "ProductId": "P1",
        "DeviceName": device,
        "Payload": "{}",
    }
    response = httpx.post(emu.url, json=body, timeout=5).json()["Response"]
    return str(response.get("Error", {}).get("Code", "OK"))


# --------------------------------------------------------------------------- the signer


def test_signer_matches_a_vector_computed_here() -> None:
    """The docs' worked example (AppCreateCellphoneUser), plus an empty parameter and a key
    with `_`: the string is written out by hand and its HMAC-SHA1 computed with hmac here."""
    params: dict[str, object] = {
        "Timestamp": 1546315200,
        "Action": "AppCreateCellphoneUser",
        "RequestId": "8b8d499bbba1ac28b6da21b4",
        "PhoneNumber": "13900000000",
        "AppKey": "ahPxdKWywfNTGrejd",
        "Nonce": 71087795,
        "Password": "My!P@ssword",
        "CountryCode": "86",
        "VerificationCode": "123456",
        "Empty": "",
        "Signature": "ignored",
    }
    expected_text = (
        "Action=AppCreateCellphoneUser&AppKey=ahPxdKWywfNTGrejd&CountryCode=86&Nonce=71087795"
        "&Password=My!P@ssword&PhoneNumber=13900000000&RequestId=8b8d499bbba1ac28b6da21b4"
        "&Timestamp=1546315200&VerificationCode=123456"
    )
    assert string_to_sign(params) == expected_text
    digest = hmac.new(b"NjIzMzU0NzM0NTg", expected_text.encode(), hashlib.sha1).digest()
    assert sign(params, "NjIzMzU0NzM0NTg") == base64.b64encode(digest).decode()
    assert string_to_sign({"b_c": "1", "a": "2", "ba": "3"}) == "a=2&b.c=1&ba=3"


def test_login_request_is_signed_over_every_parameter() -> None:
    body = login_request(CREDENTIALS, timestamp=1700000000, nonce=9, request_id="r1")
    text = (
        f"Action=AppGetToken&AppKey={APP_KEY}&Email={EMAIL}&Nonce=9&Password={PASSWORD}"
        "&RequestId=r1&Timestamp=1700000000&Type=email"
    )
    digest = hmac.new(APP_SECRET.encode(), text.encode(), hashlib.sha1).digest()
    assert body["Signature"] == base64.b64encode(digest).decode()
    assert body["Timestamp"] == 1700000000 and body["Nonce"] == 9


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("ops@example.com", {"Type": "email", "Email": "ops@example.com"}),
        ("+86 13900000000", {"Type": "phone", "CountryCode": "86", "PhoneNumber": "13900000000"}),
        ("+86-13900000000", {"Type": "phone", "CountryCode": "86", "PhoneNumber": "13900000000"}),
        (" +1 5551234567 ", {"Type": "phone", "CountryCode": "1", "PhoneNumber": "5551234567"}),
    ],
)
def test_user_forms(text: str, fields: dict[str, str]) -> None:
    assert User.parse(text).fields() == fields


@pytest.mark.parametrize("text", ["13900000000", "+86 139 0000 0000", "ops", "+86_139000", ""])
def test_bad_users_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="RRPCSYNC_USER must be an email address or a phone"):
        User.parse(text)


def test_precedence_of_the_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    creds = tmp_path / "creds"
    creds.write_text("\n".join(f"{k}={v}" for k, v in FOUR.items()))
    creds.chmod(0o600)
    env = {**FOUR, "RRPCSYNC_ACCESS_TOKEN": "env-token"}

    by_file = resolve_auth(env, token_file=str(token_file))
    assert isinstance(by_file, StaticAuth) and by_file.token == "file-token"
    by_creds = resolve_auth({}, credentials_file=str(creds))
    assert isinstance(by_creds, LoginAuth) and by_creds.credentials == CREDENTIALS
    assert by_creds.source == f"--credentials-file {creds}" and by_creds.notes == ()
    by_env = resolve_auth(env)
    assert isinstance(by_env, LoginAuth) and by_env.credentials == CREDENTIALS
    assert by_env.notes == ("RRPCSYNC_ACCESS_TOKEN is set too and ignored",)
    static = resolve_auth({"RRPCSYNC_ACCESS_TOKEN": " env-token "})
    assert isinstance(static, StaticAuth) and static.token == "env-token"
    with pytest.raises(ConfigError, match="either --access-token-file or --credentials-file"):
        resolve_auth({}, str(creds), str(token_file))
    with pytest.raises(ConfigError, match="no credentials: set RRPCSYNC_APP_KEY"):
        resolve_auth({})


def test_some_but_not_all_keys_is_an_error_naming_the_missing_ones() -> None:
    env = {"RRPCSYNC_APP_KEY": APP_KEY, "RRPCSYNC_PASSWORD": PASSWORD}
    with pytest.raises(ConfigError) as caught:
        resolve_auth({**env, "RRPCSYNC_ACCESS_TOKEN": "t"})
    assert str(caught.value).startswith("RRPCSYNC_APP_SECRET, RRPCSYNC_USER missing")
    assert PASSWORD not in str(caught.value)


def test_credentials_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "creds.env"
    path.write_text(
        "# rrpcsync credentials\n\n"
        f"export RRPCSYNC_APP_KEY = {APP_KEY}\n"
        f"RRPCSYNC_APP_SECRET='{APP_SECRET}'\n"
        f'RRPCSYNC_USER="+86-13900000000"\n'
        f"RRPCSYNC_PASSWORD={PHONE_PASSWORD}=x\n"
    )
    path.chmod(0o600)
    auth = resolve_auth({}, credentials_file=str(path))
    assert isinstance(auth, LoginAuth)
    assert auth.credentials == Credentials(
        APP_KEY,
        APP_SECRET,
        User(country_code="86", phone_number="13900000000"),
        PHONE_PASSWORD + "=x",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"RRPCSYNC_APP_KEY={APP_KEY}\n{PASSWORD}\n", ":2: expected KEY=value"),
        (f"RRPCSYNC_TOKEN={PASSWORD}\n", ":1: unknown key 'RRPCSYNC_TOKEN'"),
        ("RRPCSYNC_APP_KEY=a\nRRPCSYNC_APP_KEY=b\n", ":2: RRPCSYNC_APP_KEY is set twice"),
        (
            f"RRPCSYNC_APP_KEY={APP_KEY}\n",
            ": RRPCSYNC_APP_SECRET, RRPCSYNC_USER, RRPCSYNC_PASSWORD missing",
        ),
    ],
)
def test_credentials_file_errors_name_the_line_never_the_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "creds"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        resolve_auth({}, credentials_file=str(path))
    assert str(caught.value).startswith(str(path) + message)
    assert PASSWORD not in str(caught.value)


def test_a_file_readable_by_others_gets_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("\n".join(f"{k}={v}" for k, v in FOUR.items()))
    path.chmod(0o644)
    auth = resolve_auth({}, credentials_file=str(path))
    assert auth.notes == (
        f"warning: credentials file {path} is accessible by group or others (mode 0644); "
        f"run chmod 600 {path}",
    )
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_auth({}, credentials_file=str(tmp_path / "missing"))


def test_reprs_hold_no_secret() -> None:
    login = AppLogin(CREDENTIALS, "https://example.invalid/appapi")
    shown = (
        repr(CREDENTIALS)
        + repr(login)
        + repr(StaticToken("tok-xyz"))
        + repr(StaticAuth("tok-xyz", "env"))
    )
    assert PASSWORD not in shown and APP_SECRET not in shown and "tok-xyz" not in shown


# --------------------------------------------------------------------------- endpoints


def test_sites_and_overrides() -> None:
    china, _ = resolve_endpoints()
    assert china.rrpc == "https://iot.cloud.tencent.com/api/exploreropen/tokenapi"
    assert china.login == "https://iot.cloud.tencent.com/api/exploreropen/appapi"
    overseas, _ = resolve_endpoints("overseas")
    host = "https://oversea.iotcloud.tencentiotcloud.com"
    assert (overseas.rrpc, overseas.login) == (
        f"{host}/api/exploreropen/tokenapi",
        f"{host}/api/exploreropen/appapi",
    )
    both, _ = resolve_endpoints("overseas", "http://127.0.0.1:8080/", "http://127.0.0.1:9/login")
    assert (both.rrpc, both.login) == ("http://127.0.0.1:8080/", "http://127.0.0.1:9/login")
    only_login, _ = resolve_endpoints("china", None, "https://proxy.example/appapi")
    assert only_login.rrpc == china.rrpc and only_login.login == "https://proxy.example/appapi"
    with pytest.raises(ConfigError, match="unknown site 'mars'"):
        resolve_endpoints("mars")


@pytest.mark.parametrize(
    ("endpoint", "login"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/appapi"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/appapi"),
        (
            "https://h.example/api/exploreropen/tokenapi",
            "https://h.example/api/exploreropen/appapi",
        ),
        (
            "https://h.example/api/exploreropen/tokenapi/",
            "https://h.example/api/exploreropen/appapi",
        ),
    ],
)
def test_the_login_endpoint_follows_an_overridden_endpoint(endpoint: str, login: str) -> None:
    assert login_sibling(endpoint) == login
    assert resolve_endpoints(None, endpoint)[0].login == login


def test_https_only_applies_to_the_login_endpoint() -> None:
    with pytest.raises(ConfigError, match=r"endpoint http://login\.example/appapi must use https"):
        resolve_endpoints(None, None, "http://login.example/appapi")
    _, warnings = resolve_endpoints(None, None, "http://login.example/appapi", allow_insecure=True)
    assert warnings == [
        "login endpoint http://login.example/appapi is not https: the password and the token "
        "travel in clear text"
    ]


# --------------------------------------------------------------------------- logging in


def test_login_with_an_email(emu: Emulator) -> None:
    login = app_login(emu)
    before = time.time()
    session = asyncio.run(login_once(login))
    assert session.user == EMAIL and before + 598 <= session.expire_at <= time.time() + 600
    assert publish_code(emu, session.token) == "OK"
    assert login.logins == 1 and emu.stats()["login"]["logins"] == 1


def test_login_with_a_phone_number(emu: Emulator) -> None:
    phone = Credentials(APP_KEY, APP_SECRET, User.parse("+86-13900000000"), PHONE_PASSWORD)
    session = asyncio.run(login_once(app_login(emu, phone)))
    assert session.user == "+86 13900000000"
    assert publish_code(emu, session.token) == "OK"


@pytest.mark.parametrize(
    ("credentials", "check"),
    [
        (Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), "wrong"), Check.USER),
        (Credentials(APP_KEY, APP_SECRET, User(email="x@example.com"), PASSWORD), Check.USER),
        (Credentials(APP_KEY, "wrong-secret", User(email=EMAIL), PASSWORD), Check.APP_SECRET),
        (Credentials("unknown-key", APP_SECRET, User(email=EMAIL), PASSWORD), Check.APP_KEY),
    ],
)
def test_credential_errors_are_fatal_at_once_and_name_what_to_check(
    emu: Emulator, credentials: Credentials, check: Check
) -> None:
    with pytest.raises(LoginError) as caught:
        asyncio.run(login_once(app_login(emu, credentials)))
    error = caught.value
    assert error.check is check and str(error).endswith(f"; check {check.value}")
    assert sum(emu.stats()["login"]["refused"].values()) == 1  # not retried
    for secret in (PASSWORD, APP_SECRET, "wrong-secret"):
        assert secret not in str(error)


def test_a_wrong_password_says_which_variables_to_check(emu: Emulator) -> None:
    wrong = Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), "wrong")
    with pytest.raises(LoginError) as caught:
        asyncio.run(login_once(app_login(emu, wrong)))
    assert str(caught.value) == (
        "login failed (InternalError: InvalidParameterValue.UserLoginFailed|用户登录失败); "
        "check RRPCSYNC_USER and RRPCSYNC_PASSWORD"
    )


def test_clock_skew(emu: Emulator) -> None:
    slow = app_login(emu, clock=lambda: time.time() - 400)
    with pytest.raises(LoginError) as caught:
        asyncio.run(login_once(slow))
    assert caught.value.code == "InvalidParameterValue.TimestampExpired"
    assert caught.value.check is Check.CLOCK
    assert "check the system clock" in str(caught.value)
    tolerated = app_login(emu, clock=lambda: time.time() + 200)
    assert publish_code(emu, asyncio.run(login_once(tolerated)).token) == "OK"


def test_a_replayed_nonce_is_refused_and_a_fresh_one_each_time_is_sent(emu: Emulator) -> None:
    login = app_login(emu, nonce=lambda: 777, attempts=2)

    async def twice() -> None:
        first = await login.token()
        await login.refused(first)  # logs in again: with the same nonce, a replay

    with pytest.raises(LoginError) as caught:
        asyncio.run(twice())
    assert caught.value.code == "InvalidParameterValue.NonceReused"
    assert emu.stats()["login"] == {
        "logins": 1,
        "refused": {"InvalidParameterValue.NonceReused": 2},  # transient: tried twice
    }
    emu.reset()
    fresh = app_login(emu)

    async def three_logins() -> None:
        for _ in range(2):
            token = await fresh.token()
            fresh.accepted(token)
            await fresh.refused(token)

    asyncio.run(three_logins())
    assert fresh.logins == 3 and emu.stats()["login"] == {"logins": 3, "refused": {}}


def test_one_login_at_a_time_and_requests_wait_for_it(emu: Emulator) -> None:
    login = app_login(emu)

    async def many() -> set[str]:
        return set(await asyncio.gather(*(login.token() for _ in range(50))))

    tokens = asyncio.run(many())
    assert len(tokens) == 1 and login.logins == 1 and emu.stats()["login"]["logins"] == 1


def test_a_refusal_seen_by_many_requests_logs_in_once(emu: Emulator) -> None:
    login = app_login(emu)

    async def scenario() -> tuple[str, str]:
        old = await login.token()
        login.accepted(old)
        emu.revoke_tokens()
        assert publish_code(emu, old) == "InvalidParameterValue.InvalidAccessToken"
        renewed = await asyncio.gather(*(login.refused(old) for _ in range(20)))
        assert all(renewed)
        return old, await login.token()

    old, new = asyncio.run(scenario())
    assert new != old and login.logins == 2
    assert publish_code(emu, new) == "OK"


def test_renewal_shortly_before_expire_at(emulator: StartEmulator) -> None:
    emu = emulator({"token": None, "login": {**FLEET_LOGIN, "token_lifetime": 300}})
    offset = [0.0]
    login = app_login(emu, clock=lambda: time.time() + offset[0])

    async def scenario() -> list[str]:
        first = await login.token()
        offset[0] = 230.0  # a 300 s token: 70 s left, more than 20 % of its life
        same = await login.token()
        offset[0] = 250.0  # 50 s left: renew now
        renewed = await login.token()
        return [first, same, renewed]

    first, same, renewed = asyncio.run(scenario())
    assert first == same != renewed and login.logins == 2


def test_a_new_token_refused_at_once_is_fatal(emu: Emulator) -> None:
    login = app_login(emu)

    async def scenario() -> None:
        token = await login.token()
        login.accepted(token)
        emu.revoke_tokens()
        assert publish_code(emu, token) == "InvalidParameterValue.InvalidAccessToken"
        assert await login.refused(token)
        renewed = await login.token()
        emu.revoke_tokens()
        assert publish_code(emu, renewed) == "InvalidParameterValue.InvalidAccessToken"
        await login.refused(renewed)

    with pytest.raises(LoginError, match="the token of the new login was refused at once"):
        asyncio.run(scenario())
    with pytest.raises(LoginError):  # the failure sticks: no login storm
        asyncio.run(login.token())


def test_a_failed_relogin_is_fatal(emulator: StartEmulator) -> None:
    emu = emulator({"token": None, "login": {**FLEET_LOGIN, "logins_allowed": 1}})
    login = app_login(emu)

    async def scenario() -> None:
        token = await login.token()
        login.accepted(token)
        await login.refused(token)

    with pytest.raises(LoginError) as caught:
        asyncio.run(scenario())
    assert caught.value.check is Check.USER and login.logins == 1


def test_network_errors_are_retried_then_fatal() -> None:
    login = AppLogin(CREDENTIALS, "http://127.0.0.1:9/appapi", attempts=2, backoff=0.0)
    with pytest.raises(LoginError) as caught:
        asyncio.run(login.token())
    assert caught.value.code == "Transport.ConnectError" and caught.value.check is Check.NETWORK


def test_the_wrong_endpoint_is_named(emulator: StartEmulator) -> None:
    emu = emulator({"login": FLEET_LOGIN})
    login = AppLogin(CREDENTIALS, emu.url, backoff=0.0)  # the token API, not the app API
    with pytest.raises(LoginError) as caught:
        asyncio.run(login.token())
    assert caught.value.check is Check.ENDPOINT


def test_a_token_already_past_its_expire_at_is_renewed_only_when_refused(emu: Emulator) -> None:
    login = app_login(emu, clock=lambda: time.time() + 290)  # the server says 600 s: 310 left

    async def tokens() -> set[str]:
        return {await login.token() for _ in range(5)}

    assert len(asyncio.run(tokens())) == 1
    ahead = AppLogin(
        CREDENTIALS, emu.login_url, clock=lambda: time.time() + 299, backoff=0.0
    )  # within the skew the emulator tolerates, yet ExpireAt looks 301 s nearer
    emu.configure({"login": {**FLEET_LOGIN, "token_lifetime": 200}})
    assert len({asyncio.run(ahead.token()) for _ in range(3)}) == 1 and ahead.logins == 1


def test_one_login_serves_several_event_loops(emu: Emulator) -> None:
    login = app_login(emu)
    first = asyncio.run(login.token())
    assert asyncio.run(login.token()) == first and login.logins == 1


def test_static_tokens_cannot_be_renewed() -> None:
    static = StaticToken("tok")
    assert asyncio.run(static.token()) == "tok"
    assert asyncio.run(static.refused("tok")) is False and static.secrets() == ("tok",)


def test_debug_log_and_errors_hold_no_secret(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rrpcsync")
    login = app_login(emu)
    session = asyncio.run(login_once(login))
    wrong = Credentials(APP_KEY, APP_SECRET, User(email=EMAIL), "wrong-" + PASSWORD)
    with pytest.raises(LoginError):
        asyncio.run(login_once(app_login(emu, wrong)))
    text = caplog.text
    assert "login: logged in as ops@example.com until" in text
    assert '"Password": "***"' in text and '"Signature": "***"' in text
    for secret in (PASSWORD, APP_SECRET, session.token):
        assert secret not in text
    assert set(login.secrets()) >= {PASSWORD, APP_SECRET, session.token}


def test_credentials_file_mode_is_checked_only_on_posix(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("\n".join(f"{k}={v}" for k, v in FOUR.items()))
    path.chmod(0o640)
    notes = resolve_auth({}, credentials_file=str(path)).notes
    assert (len(notes) == 1) is (os.name == "posix")
