"""The cloud emulator over real sockets on 127.0.0.1 (it imports nothing of the reconciler)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rrpcsync.emulator import Emulator, EmulatorError, Fleet, FleetError, load_fleet, serve

from .conftest import FLEET_TOKEN, StartEmulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FLEET = ROOT / "examples" / "emulator" / "fleet.yaml"
MISSING = object()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as http:
        yield http


def request_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Action": "AppPublishRRPCMessage",
        "RequestId": "req-1",
        "AccessToken": FLEET_TOKEN,
        "ProductId": "P1",
        "DeviceName": "d1",
        "Payload": '{"v":1}',
    }
    body.update(fields)
    return {key: value for key, value in body.items() if value is not MISSING}


def publish(client: httpx.Client, emu: Emulator, **fields: Any) -> dict[str, Any]:
    response = client.post(emu.url, json=request_body(**fields))
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def error_of(answer: dict[str, Any]) -> tuple[str, str]:
    error = answer["Response"]["Error"]
    return error["Code"], error["Message"]


def reply_of(answer: dict[str, Any]) -> bytes:
    return base64.b64decode(answer["Response"]["PayloadBase64"])


# --------------------------------------------------------------------------- success


def test_success_shape_and_base64_reply(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "ok-你好"}}})
    first = publish(client, emu, RequestId="abc")
    second = publish(client, emu, RequestId="def")
    assert set(first) == {"Response"}
    assert set(first["Response"]) == {"MessageId", "PayloadBase64", "RequestId"}
    assert first["Response"]["RequestId"] == "abc"
    assert reply_of(first) == "ok-你好".encode()
    assert second["Response"]["MessageId"] > first["Response"]["MessageId"]


def test_replies_echo_mapping_base64_and_default(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator(
        {
            "default": {"reply": {"code": 0, "msg": "applied"}},
            "devices": {
                "P1/echo": {"reply": "echo"},
                "P1/raw": {"reply_base64": "/wA="},
                "P1/plain": None,
            },
        }
    )
    echoed = publish(client, emu, DeviceName="echo", Payload="温度=20")
    assert reply_of(echoed) == "温度=20".encode()
    assert reply_of(publish(client, emu, DeviceName="raw")) == b"\xff\x00"
    assert reply_of(publish(client, emu, DeviceName="plain")) == b'{"code":0,"msg":"applied"}'
    bare = emulator({"devices": {"P1/d1": {}}})
    assert reply_of(publish(client, bare)) == b'{"code":0}'


def test_null_message_id_and_reply(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {"null_message_id": True, "null_reply": True}}})
    answer = publish(client, emu)["Response"]
    assert (answer["MessageId"], answer["PayloadBase64"], answer["RequestId"]) == (
        None,
        None,
        "req-1",
    )


def test_wrapped_shape(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"shape": "wrapped", "devices": {"P1/d1": {"reply": "hi"}, "P1/off": {}}})
    emu.configure({"devices": {"P1/off": {"offline": True}}})
    ok = publish(client, emu)
    assert (ok["code"], ok["msg"]) == (0, "")
    assert ok["data"]["RequestId"] == "req-1"
    assert base64.b64decode(ok["data"]["PayloadBase64"]) == b"hi"
    failed = publish(client, emu, DeviceName="off")
    assert failed["code"] == 1
    assert failed["data"]["Error"]["Code"] == "FailedOperation.DeviceOffline"
    assert failed["msg"] == failed["data"]["Error"]["Message"]
    assert failed["data"]["RequestId"] == "req-1"


def test_any_path_is_the_api_and_get_is_not(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {}}})
    response = client.post(emu.url + "api/exploreropen/tokenapi", json=request_body())
    assert "MessageId" in response.json()["Response"]
    assert client.get(emu.url).status_code == 405


# --------------------------------------------------------------------------- request checks


def test_bad_and_missing_token(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {}}})
    for token in ("wrong", MISSING, 42, ""):
        code, _ = error_of(publish(client, emu, AccessToken=token))
        assert code == "InvalidParameterValue.InvalidAccessToken"
    assert emu.stats()["per_device"]["P1/d1"]["requests"] == 0


def test_expired_token(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"token_expired": True, "devices": {"P1/d1": {}}})
    answer = publish(client, emu)
    assert error_of(answer) == ("InvalidParameterValue.InvalidAccessToken", "token expired")
    assert answer["Response"]["RequestId"] == "req-1"
    assert error_of(publish(client, emu, AccessToken="wrong"))[1] != "token expired"


@pytest.mark.parametrize("field", ["ProductId", "DeviceName", "Payload", "RequestId"])
@pytest.mark.parametrize("value", [MISSING, 7, None])
def test_missing_or_non_string_parameter(
    emulator: StartEmulator, client: httpx.Client, field: str, value: Any
) -> None:
    emu = emulator({"auto_devices": True})
    code, message = error_of(publish(client, emu, **{field: value}))
    assert code == "InvalidParameterValue"
    assert field in message


def test_action_checked_before_token(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"auto_devices": True})
    code, message = error_of(publish(client, emu, Action="AppGetDevice", AccessToken="x"))
    assert code == "InvalidParameterValue.ActionNotFound"
    assert "AppGetDevice" in message


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
def test_body_not_a_json_object(emulator: StartEmulator, client: httpx.Client, body: bytes) -> None:
    emu = emulator({"auto_devices": True})
    answer = client.post(emu.url, content=body).json()
    assert error_of(answer)[0] == "InvalidParameterValue"
    assert answer["Response"]["RequestId"]  # generated
    assert emu.stats()["log"][-1]["code"] == "InvalidParameterValue"


def test_payload_over_limit(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"auto_devices": True})
    assert "Error" not in publish(client, emu, Payload="x" * 65536)["Response"]
    code, _ = error_of(publish(client, emu, Payload="x" * 65537))
    assert code == "InvalidParameterValue.PayloadOverLimit"
    code, _ = error_of(publish(client, emu, Payload="温" * 21846))  # 65538 bytes of UTF-8
    assert code == "InvalidParameterValue.PayloadOverLimit"
    code, _ = error_of(publish(client, emu, Payload="x" * 2_000_000))  # not an HTTP 413
    assert code == "InvalidParameterValue.PayloadOverLimit"


def test_unknown_device(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {}}, "products": {"P2": {"count": 3}}})
    code, message = error_of(publish(client, emu, DeviceName="ghost"))
    assert code == "ResourceNotFound.DeviceNotExist"
    assert "P1/ghost" in message
    stats = emu.stats()
    assert stats["log"][-1]["device"] == "P1/ghost"
    assert "P1/ghost" not in stats["per_device"]


# --------------------------------------------------------------------------- device behaviour


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"offline": True}, "FailedOperation.DeviceOffline"),
        ({"no_subscription": True}, "FailedOperation.DeviceNoSubscription"),
        ({"rrpc_timeout": True, "latency": 0.05}, "FailedOperation.RRPCTimeout"),
    ],
)
def test_device_failure_codes(
    emulator: StartEmulator, client: httpx.Client, settings: dict[str, Any], code: str
) -> None:
    emu = emulator({"devices": {"P1/d1": settings}})
    assert error_of(publish(client, emu))[0] == code
    device = emu.stats()["per_device"]["P1/d1"]
    assert (device["requests"], device["ok"], device["acked"]) == (1, 0, [])


def test_fail_times_then_success(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator(
        {
            "devices": {
                "P1/d1": {"fail_times": 2},
                "P1/d2": {"fail_times": 1, "fail_code": "InternalError.Busy"},
            }
        }
    )
    codes = [error_of(publish(client, emu))[0] for _ in range(2)]
    assert codes == ["InternalError", "InternalError"]
    assert "Error" not in publish(client, emu)["Response"]
    assert error_of(publish(client, emu, DeviceName="d2"))[0] == "InternalError.Busy"
    assert "Error" not in publish(client, emu, DeviceName="d2")["Response"]
    assert emu.stats()["per_device"]["P1/d1"] == {
        "requests": 3,
        "ok": 1,
        "acked": ['{"v":1}'],
        "last_payload": '{"v":1}',
    }
    emu.reset()  # failures are injected again after a reset
    assert error_of(publish(client, emu))[0] == "InternalError"


def test_rate_limit(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"auto_devices": True, "rate_limit": 5})
    answers = [publish(client, emu, DeviceName=f"d{i}") for i in range(12)]
    codes = [a["Response"].get("Error", {}).get("Code", "OK") for a in answers]
    assert codes[:5] == ["OK"] * 5  # a burst of one second's worth
    assert "RequestLimitExceeded" in codes
    limited = emu.stats()["per_device"][f"P1/d{codes.index('RequestLimitExceeded')}"]
    assert (limited["requests"], limited["ok"]) == (1, 0)  # counted, never delivered
    time.sleep(0.25)
    assert "Error" not in publish(client, emu, DeviceName="later")["Response"]


def test_latency_does_not_block_other_devices(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.3})
    started = time.monotonic()
    threads = [
        threading.Thread(target=publish, args=(client, emu), kwargs={"DeviceName": f"d{i}"})
        for i in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0
    stats = emu.stats()
    assert stats["max_in_flight"] == 5
    assert stats["concurrency_violations"] == 0


def test_concurrent_requests_to_one_device_are_a_violation(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"devices": {"P1/slow": {"latency": 0.3}, "P1/d1": {}}})
    first = threading.Thread(target=publish, args=(client, emu), kwargs={"DeviceName": "slow"})
    first.start()
    deadline = time.monotonic() + 5
    while emu.stats(include_log=False)["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    publish(client, emu, DeviceName="slow")  # while the first is still in flight
    publish(client, emu)  # sequential requests are fine
    publish(client, emu)
    first.join()
    stats = emu.stats()
    assert stats["concurrency_violations"] == 1
    assert stats["concurrency_violation_keys"] == ["P1/slow"]
    assert stats["max_in_flight"] == 2
    assert stats["in_flight"] == 0


def test_auto_devices_accept_any_name(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"auto_devices": True, "default": {"reply": "auto"}})
    for name in ("a", "dev-99999", "x_y"):
        assert reply_of(publish(client, emu, ProductId="ANY", DeviceName=name)) == b"auto"
    assert set(emu.stats()["per_device"]) == {"ANY/a", "ANY/dev-99999", "ANY/x_y"}


def test_products_declare_numbered_devices(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"products": {"ASBHKN": {"count": 6}, "GW": {"count": 2, "prefix": "gw"}}})

    def exists(product: str, name: str) -> bool:
        return "Error" not in publish(client, emu, ProductId=product, DeviceName=name)["Response"]

    assert exists("ASBHKN", "dev-001") and exists("ASBHKN", "dev-006")
    assert exists("GW", "gw002")
    for product, name in [
        ("ASBHKN", "dev-007"),
        ("ASBHKN", "dev-000"),
        ("ASBHKN", "dev-1"),
        ("ASBHKN", "dev-0001"),
        ("GW", "dev-001"),
        ("OTHER", "dev-001"),
    ]:
        assert not exists(product, name), (product, name)


# --------------------------------------------------------------------------- control


def test_stats_endpoint_log_and_acked(emulator: StartEmulator, client: httpx.Client) -> None:
    emu = emulator({"devices": {"P1/d1": {}, "P1/d2": {"offline": True}, "P1/idle": {}}})
    before = time.monotonic()
    publish(client, emu, RequestId="r1", Payload="a")
    publish(client, emu, RequestId="r2", Payload="b")
    publish(client, emu, RequestId="r3", DeviceName="d2")
    stats = client.get(emu.url + "_emulator/stats").json()
    assert stats == emu.stats()
    assert stats["requests_total"] == 3
    assert stats["per_device"]["P1/d1"] == {
        "requests": 2,
        "ok": 2,
        "acked": ["a", "b"],
        "last_payload": "b",
    }
    assert stats["per_device"]["P1/idle"]["requests"] == 0
    log = stats["log"]
    assert [(e["device"], e["request_id"], e["code"]) for e in log] == [
        ("P1/d1", "r1", "OK"),
        ("P1/d1", "r2", "OK"),
        ("P1/d2", "r3", "FailedOperation.DeviceOffline"),
    ]
    assert before <= log[0]["t"] <= log[0]["t_end"] <= log[1]["t"] <= time.monotonic()
    assert "log" not in client.get(emu.url + "_emulator/stats?log=0").json()


def test_reset_clears_counters_but_not_device_memory(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"auto_devices": True})
    publish(client, emu, Payload="remembered")
    assert client.post(emu.url + "_emulator/reset").json() == {"ok": True}
    stats = emu.stats()
    assert (stats["requests_total"], stats["log"], stats["max_in_flight"]) == (0, [], 0)
    assert stats["per_device"]["P1/d1"] == {
        "requests": 0,
        "ok": 0,
        "acked": [],
        "last_payload": "remembered",
    }
    emu.reset(memory=True)
    assert emu.stats()["per_device"] == {}


def test_config_endpoint_changes_behaviour_at_runtime(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"devices": {"P1/d1": {"reply": "mine"}}})
    url = emu.url + "_emulator/config"
    answer = client.post(url, json={"devices": {"P1/d1": {"offline": True}}}).json()
    assert answer["ok"] is True
    assert answer["fleet"]["devices"]["P1/d1"] == {"reply": "mine", "offline": True}
    assert error_of(publish(client, emu))[0] == "FailedOperation.DeviceOffline"
    client.post(url, json={"devices": {"P1/d1": {"offline": None}}})
    assert reply_of(publish(client, emu)) == b"mine"
    client.post(url, json={"token_expired": True})
    assert error_of(publish(client, emu))[1] == "token expired"
    assert client.get(url).json()["token_expired"] is True


def test_config_rejects_bad_updates_and_keeps_the_fleet(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"devices": {"P1/d1": {}}})
    url = emu.url + "_emulator/config"
    bad = client.post(url, json={"devices": {"P1/d1": {"latency": "slow"}}})
    assert bad.status_code == 400
    assert "latency" in bad.json()["error"]
    assert client.post(url, content=b"nope").status_code == 400
    with pytest.raises(FleetError, match="unknown key 'colour'"):
        emu.configure({"colour": "blue"})
    assert "Error" not in publish(client, emu)["Response"]
    assert client.get(emu.url + "_emulator/nothing").status_code == 404


def test_configure_restarts_injected_failures_and_rate_limit(
    emulator: StartEmulator, client: httpx.Client
) -> None:
    emu = emulator({"devices": {"P1/d1": {"fail_times": 1}}})
    assert error_of(publish(client, emu))[0] == "InternalError"
    assert "Error" not in publish(client, emu)["Response"]
    emu.configure({"devices": {"P1/d1": {"fail_times": 1, "fail_code": "InternalError.X"}}})
    assert error_of(publish(client, emu))[0] == "InternalError.X"
    emu.configure({"rate_limit": 1})
    publish(client, emu)
    assert error_of(publish(client, emu))[0] == "RequestLimitExceeded"
    emu.configure({"rate_limit": None})
    assert "Error" not in publish(client, emu)["Response"]


# --------------------------------------------------------------------------- fleet files


def test_example_fleet_file_loads(emulator: StartEmulator, client: httpx.Client) -> None:
    fleet = load_fleet(EXAMPLE_FLEET)
    assert fleet.products["ASBHKN"].count == 6
    emu = emulator(EXAMPLE_FLEET)
    answer = publish(client, emu, ProductId="GW7Q2Z", DeviceName="gw-south")
    assert reply_of(answer) == b"ABCD"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("devices: [", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("colour: blue\n", "unknown key 'colour'"),
        ("rate_limit: fast\n", "rate_limit"),
        ("rate_limit: 0\n", "rate_limit"),
        ("shape: html\n", "shape"),
        ("devices: {P1/d1: {lag: 1}}\n", "unknown key 'lag'"),
        ("devices: {P1/d1: {latency: -1}}\n", "latency"),
        ("devices: {P1/d1: {offline: yes-please}}\n", "offline"),
        ("devices: {P1/d1: {reply: 5}}\n", "reply"),
        ("devices: {P1/d1: {reply: a, reply_base64: YQ==}}\n", "not both"),
        ("devices: {P1/d1: {reply_base64: '***'}}\n", "base64"),
        ("devices: {P1/d1: {fail_times: 1.5}}\n", "fail_times"),
        ("devices: {d1: {}}\n", "ProductId/DeviceName"),
        ("products: {P1: {count: -1}}\n", "count"),
        ("products: {P1: {prefix: d}}\n", "count"),
    ],
)
def test_bad_fleet_files_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FleetError, match=r"fleet\.yaml") as caught:
        load_fleet(path)
    assert expected in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_fleet_from_dict_and_round_trip() -> None:
    fleet = Fleet.from_dict({"devices": {"P1/d1": {"reply": {"a": [1]}}}, "latency": 0.5})
    assert fleet.lookup("P1/d1", "P1", "d1") is not None
    assert fleet.lookup("P1/d2", "P1", "d2") is None
    assert Fleet.from_dict(fleet.to_dict()) == fleet
    behaviour = fleet.behaviours["P1/d1"]
    assert behaviour.latency == 0.5
    assert base64.b64decode(behaviour.reply_base64 or "") == b'{"a":[1]}'
    assert load_fleet(fleet) is fleet
    assert load_fleet({}).token == FLEET_TOKEN


# --------------------------------------------------------------------------- serving


def test_refuses_non_loopback_hosts() -> None:
    with pytest.raises(EmulatorError, match="loopback"):
        Emulator({}, host="0.0.0.0").start()


def test_serve_in_a_running_loop(client: httpx.Client) -> None:
    async def scenario() -> dict[str, Any]:
        ready: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(
            serve({"auto_devices": True}, "127.0.0.1", 0, on_ready=ready.put_nowait)
        )
        url = await asyncio.wait_for(ready.get(), 5)
        body = json.dumps(request_body()).encode()
        answer = await asyncio.to_thread(lambda: client.post(url, content=body).json())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return answer  # type: ignore[no-any-return]

    assert "MessageId" in asyncio.run(scenario())["Response"]


def test_main_blocking_serves_until_sigterm(client: httpx.Client) -> None:
    code = (
        "import sys\n"
        "from rrpcsync.emulator import main_blocking\n"
        "main_blocking({'auto_devices': True}, '127.0.0.1', 0,"
        " on_ready=lambda url: print(url, flush=True))\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", code]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert "MessageId" in client.post(url, json=request_body()).json()["Response"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert process.stdout.read().strip() == "stopped"
        finally:
            if process.poll() is None:
                process.kill()
