"""The emulator's AppGetToken, driven with hand-built, hand-signed requests (no rrpcsync client
code): the signature each test sends is computed here from a literal string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import httpx
import pytest

from rrpcsync.emulator import Emulator, FleetError, load_fleet
from tests.conftest import StartEmulator

APP_KEY = "emu-app-key"
APP_SECRET = "emu-app-secret-Q9"
EMAIL = "ops@example.com"
PASSWORD = "pw-Alpha-7"

LOGIN = {
    "app_key": APP_KEY,
    "app_secret": APP_SECRET,
    "token_lifetime": 60,
    "users": [
        {"email": EMAIL, "password": PASSWORD},
        {"country_code": "86", "phone_number": "13900000000", "password": "pw-phone"},
    ],
}


def hmac_b64(secret: str, text: str) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    ).decode()


def email_login(timestamp: int, nonce: int, password: str = PASSWORD) -> dict[str, Any]:
    """An AppGetToken body for EMAIL, signed over its string written out by hand."""
    rid = "rid-" + uuid.uuid4().hex
    text = (
        f"Action=AppGetToken&AppKey={APP_KEY}&Email={EMAIL}&Nonce={nonce}"
        f"&Password={password}&RequestId={rid}&Timestamp={timestamp}&Type=email"
    )
    return {
        "Action": "AppGetToken",
        "RequestId": rid,
        "AppKey": APP_KEY,
        "Timestamp": timestamp,
        "Nonce": nonce,
        "Type": "email",
        "Email": EMAIL,
        "Password": password,
        "Signature": hmac_b64(APP_SECRET, text),
    }


def post(emu: Emulator, body: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    response = httpx.post(url or emu.login_url, json=body, timeout=5)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()["Response"]
    return document


def error_code(answer: dict[str, Any]) -> str | None:
    error = answer.get("Error")
    return None if error is None else str(error["Code"])


def publish(emu: Emulator, token: str) -> dict[str, Any]:
    body = {
        "Action": "AppPublishRRPCMessage",
        "RequestId": str(uuid.uuid4()),
        "AccessToken": token,
        "ProductId": "P1",
        "DeviceName": "d1",
        "Payload": "{}",
    }
    return post(emu, body, emu.url)


@pytest.fixture
def emu(emulator: StartEmulator) -> Emulator:
    return emulator({"token": None, "auto_devices": True, "login": LOGIN})


def test_a_signed_email_login_gets_a_token_that_publishes(emu: Emulator) -> None:
    now = int(time.time())
    answer = post(emu, email_login(now, 71087795))
    data = answer["Data"]
    assert error_code(answer) is None and abs(data["ExpireAt"] - (now + 60)) <= 1
    assert error_code(publish(emu, data["Token"])) is None
    assert emu.stats()["login"] == {"logins": 1, "refused": {}}


def test_phone_login_on_the_docs_path_and_on_a_short_path(emu: Emulator) -> None:
    now = int(time.time())
    rid = "8b8d499bbba1ac28b6da21b4"
    text = (
        f"Action=AppGetToken&AppKey={APP_KEY}&CountryCode=86&Nonce=5&Password=pw-phone"
        f"&PhoneNumber=13900000000&RequestId={rid}&Timestamp={now}&Type=phone"
    )
    body = {
        "Action": "AppGetToken",
        "RequestId": rid,
        "AppKey": APP_KEY,
        "Timestamp": str(now),  # a decimal string is signed the same way
        "Nonce": 5,
        "Type": "phone",
        "CountryCode": "86",
        "PhoneNumber": "13900000000",
        "Password": "pw-phone",
        "Signature": hmac_b64(APP_SECRET, text),
    }
    assert "Token" in post(emu, body)["Data"]
    body["Nonce"], body["Signature"] = 6, hmac_b64(APP_SECRET, text.replace("Nonce=5", "Nonce=6"))
    assert "Token" in post(emu, body, emu.url + "appapi")["Data"]


def test_empty_parameters_are_not_signed_and_underscores_become_dots(emu: Emulator) -> None:
    now = int(time.time())
    body = email_login(now, 11)
    body["Extra_Field"], body["Blank"] = "x", ""
    text = (
        f"Action=AppGetToken&AppKey={APP_KEY}&Email={EMAIL}&Extra.Field=x&Nonce=11"
        f"&Password={PASSWORD}&RequestId={body['RequestId']}&Timestamp={now}&Type=email"
    )
    body["Signature"] = hmac_b64(APP_SECRET, text)
    assert error_code(post(emu, body)) is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"Signature": "AAAA"}, "InvalidParameterValue.SignatureFailure"),
        ({"Password": "other"}, "InvalidParameterValue.SignatureFailure"),  # signed PASSWORD
        ({"AppKey": "nobody"}, "InvalidParameterValue.AppKeyNotExist"),
        ({"Nonce": None}, "ErrorRequiredParamNotFound"),
        ({"Action": "AppCreateEmailUser"}, "InvalidAction"),
    ],
)
def test_refusals(emu: Emulator, change: dict[str, Any], code: str) -> None:
    body = {**email_login(int(time.time()), 12), **change}
    assert error_code(post(emu, body)) == code
    assert emu.stats()["login"]["refused"] == {code: 1}


def test_a_wrong_password_is_answered_like_the_cloud(emu: Emulator) -> None:
    answer = post(emu, email_login(int(time.time()), 13, password="wrong"))
    assert answer["Error"] == {
        "Code": "InternalError",
        "Message": "InvalidParameterValue.UserLoginFailed|用户登录失败",
    }


# well past the 300 s edge on both sides, so a slow (loaded) machine cannot move a case across it
@pytest.mark.parametrize(("skew", "ok"), [(-330, False), (-270, True), (270, True), (330, False)])
def test_timestamps_more_than_300_s_off_are_refused(emu: Emulator, skew: int, ok: bool) -> None:
    answer = post(emu, email_login(int(time.time()) + skew, 20 + skew + 400))
    expected = None if ok else "InvalidParameterValue.TimestampExpired"
    assert error_code(answer) == expected


def test_a_replayed_request_is_refused(emu: Emulator) -> None:
    body = email_login(int(time.time()), 424242)
    assert error_code(post(emu, body)) is None
    assert error_code(post(emu, body)) == "InvalidParameterValue.NonceReused"
    fresh = email_login(int(time.time()), 424243)
    assert error_code(post(emu, fresh)) is None


def test_tokens_expire_after_their_lifetime(emulator: StartEmulator) -> None:
    emu = emulator({"token": None, "auto_devices": True, "login": {**LOGIN, "token_lifetime": 0.4}})
    token = post(emu, email_login(int(time.time()), 30))["Data"]["Token"]
    assert error_code(publish(emu, token)) is None
    time.sleep(0.5)
    answer = publish(emu, token)
    assert answer["Error"]["Code"] == "InvalidParameterValue.InvalidAccessToken"
    assert "expired" in answer["Error"]["Message"]
    assert emu.stats()["per_device"]["P1/d1"]["ok"] == 1  # the refused one never reached it


def test_unknown_tokens_and_revoked_tokens_are_invalid(emu: Emulator) -> None:
    code = "InvalidParameterValue.InvalidAccessToken"
    assert error_code(publish(emu, "made-up")) == code
    token = post(emu, email_login(int(time.time()), 31))["Data"]["Token"]
    assert emu.issued_tokens() == [token]
    assert httpx.post(emu.url + "_emulator/revoke", timeout=5).json()["revoked"] == 1
    assert error_code(publish(emu, token)) == code


def test_logins_allowed_makes_later_logins_fail(emulator: StartEmulator) -> None:
    emu = emulator({"login": {**LOGIN, "logins_allowed": 1}})
    assert error_code(post(emu, email_login(int(time.time()), 40))) is None
    assert error_code(post(emu, email_login(int(time.time()), 41))) == "InternalError"


def test_the_fixed_token_still_works_beside_logins(emulator: StartEmulator) -> None:
    emu = emulator({"auto_devices": True, "login": LOGIN})
    assert error_code(publish(emu, "emulator-token")) is None


def test_wrapped_shape(emulator: StartEmulator) -> None:
    emu = emulator({"shape": "wrapped", "login": LOGIN})
    document = httpx.post(emu.login_url, json=email_login(int(time.time()), 50), timeout=5).json()
    assert document["code"] == 0 and "Token" in document["data"]["Data"]


@pytest.mark.parametrize(
    ("login", "message"),
    [
        ({"app_key": APP_KEY}, "login.app_secret: expected a non-empty string"),
        ({**LOGIN, "token_lifetime": 0}, "login.token_lifetime: expected seconds > 0"),
        ({**LOGIN, "users": [{"email": "a@b.c"}]}, "login.users[0].password"),
        ({**LOGIN, "users": [{"phone_number": 139, "password": "x"}]}, "country_code"),
        ({**LOGIN, "colour": 1}, "login: unknown key 'colour'"),
    ],
)
def test_fleet_login_settings_are_validated(login: dict[str, Any], message: str) -> None:
    with pytest.raises(FleetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_fleet({"login": login})


def test_login_settings_round_trip_and_update(emu: Emulator) -> None:
    fleet = load_fleet({"login": LOGIN})
    assert load_fleet(fleet.to_dict()) == fleet
    emu.configure({"login": {**LOGIN, "users": [{"email": EMAIL, "password": "changed"}]}})
    answer = post(emu, email_login(int(time.time()), 60))
    assert error_code(answer) == "InternalError"
    assert APP_SECRET not in repr(fleet) and PASSWORD not in repr(fleet)
