"""rrpcsync.client: response parsing, error classes, settings, and publish() against a tiny real
aiohttp server on 127.0.0.1 (its own, not the project's emulator)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from rrpcsync import __version__
from rrpcsync.cloud.classify import ErrorClass, classify
from rrpcsync.cloud.client import RrpcClient, transport_error_code
from rrpcsync.cloud.results import ApiResult, parse_response, parse_retry_after, redact
from rrpcsync.cloud.settings import DEFAULT_ENDPOINT, check_endpoint, resolve_token
from rrpcsync.cloud.transport import env_proxy
from rrpcsync.errors import ConfigError

TOKEN = "tok-8b4a70dd16105f-SECRET-18edd4e78a3bb8ec"
RID = "f92406b3-5a9a-4fe8-bc43-45e3d794bb68"
JSON = {"Content-Type": "application/json"}

FATAL, TRANSIENT, DEVICE = ErrorClass.FATAL, ErrorClass.TRANSIENT, ErrorClass.DEVICE


def parse(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, **kw: Any
) -> ApiResult:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_response(status, headers or JSON, raw, RID, **kw)


def success(**fields: Any) -> dict[str, Any]:
    return {"Response": {"MessageId": 74, "PayloadBase64": "QUJDRA==", "RequestId": RID, **fields}}


def error(code: str, message: str = "boom") -> dict[str, Any]:
    return {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": RID}}


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("InvalidParameterValue.InvalidAccessToken", FATAL),
        ("UnauthorizedOperation", FATAL),
        ("UnauthorizedOperation.NoPermissionToProduct", FATAL),
        ("InternalError", TRANSIENT),
        ("InternalError.DBOperationError", TRANSIENT),
        ("RequestLimitExceeded", TRANSIENT),
        ("RequestLimitExceeded.GlobalRegionUinLimitExceeded", TRANSIENT),
        ("HTTP.429", TRANSIENT),
        ("HTTP.500", TRANSIENT),
        ("HTTP.502", TRANSIENT),
        ("HTTP.503", TRANSIENT),
        ("HTTP.504", TRANSIENT),
        ("HTTP.408", TRANSIENT),
        ("Transport.ConnectError", TRANSIENT),
        ("Transport.Timeout", TRANSIENT),
        ("Transport.ReadError", TRANSIENT),
        ("Transport.ProtocolError", TRANSIENT),
        ("Protocol.NonJSONBody", TRANSIENT),
        ("Protocol.UnexpectedShape", TRANSIENT),
        ("FailedOperation.DeviceOffline", DEVICE),
        ("FailedOperation.DeviceNoSubscription", DEVICE),
        ("FailedOperation.RRPCTimeout", DEVICE),
        ("ResourceNotFound.DeviceNotExist", DEVICE),
        ("ResourceNotFound.ProductNotExist", DEVICE),
        ("InvalidParameterValue", DEVICE),
        ("InvalidParameterValue.PayloadOverLimit", DEVICE),
        ("FailedOperation.SomethingNew", DEVICE),  # unknown codes: record and go on
        ("RemoteError.1001", DEVICE),
        ("HTTP.400", DEVICE),
        ("HTTP.413", DEVICE),
        ("HTTP.401", FATAL),
        ("HTTP.403", FATAL),
        ("HTTP.404", FATAL),
        ("HTTP.301", FATAL),
        ("HTTP.²²²", DEVICE),  # not a status
        ("Transport.CertificateError", FATAL),
    ],
)
def test_classify_follows_the_design_table(code: str, expected: ErrorClass) -> None:
    assert classify(code) is expected


def test_classify_lets_table_codes_win_over_the_http_status() -> None:
    assert classify("InvalidParameterValue.InvalidAccessToken", 500) is FATAL
    assert classify("FailedOperation.DeviceOffline", 503) is DEVICE
    assert classify("InternalError", 200) is TRANSIENT


def test_classify_uses_the_http_status_for_unknown_codes() -> None:
    assert classify("FailedOperation.SomethingNew", 200) is DEVICE
    assert classify("FailedOperation.SomethingNew", 429) is TRANSIENT
    assert classify("FailedOperation.SomethingNew", 502) is TRANSIENT
    assert classify("FailedOperation.SomethingNew", 401) is FATAL
    assert classify("FailedOperation.SomethingNew", 400) is DEVICE


# --------------------------------------------------------------------------- parse_response


def test_success_response() -> None:
    result = parse(success(), elapsed=1.5)
    assert result.ok and result.error_class is None and result.code is None
    assert (result.message_id, result.reply_base64, result.reply_text) == (74, "QUJDRA==", "ABCD")
    assert (result.request_id, result.http_status, result.elapsed) == (RID, 200, 1.5)
    assert result.message is None and result.retry_after is None


def test_success_with_null_fields() -> None:
    result = parse(success(MessageId=None, PayloadBase64=None))
    assert result.ok
    assert (result.message_id, result.reply_base64, result.reply_text) == (None, None, None)


def test_success_with_missing_fields_and_empty_reply() -> None:
    assert parse({"Response": {"RequestId": RID}}).ok
    result = parse(success(PayloadBase64=""))
    assert (result.reply_base64, result.reply_text) == ("", "")


def test_invalid_base64_reply_is_still_a_success_kept_as_received() -> None:
    result = parse(success(PayloadBase64="not base64!!"))
    assert result.ok and result.message_id == 74
    assert (result.reply_base64, result.reply_text) == ("not base64!!", None)
    assert result.message is not None and "base64" in result.message


def test_reply_that_is_not_utf8_keeps_only_base64() -> None:
    reply = base64.b64encode(b"\xff\xfe\x00binary").decode()
    result = parse(success(PayloadBase64=reply))
    assert result.ok and (result.reply_base64, result.reply_text) == (reply, None)
    assert result.message is None


def test_utf8_reply_is_decoded() -> None:
    reply = base64.b64encode("温度 ok".encode()).decode()
    assert parse(success(PayloadBase64=reply)).reply_text == "温度 ok"


def test_odd_field_types_do_not_crash() -> None:
    result = parse(success(MessageId="75", PayloadBase64=12))
    assert result.ok and result.message_id == 75 and result.reply_base64 is None
    assert parse(success(MessageId=True)).message_id is None
    assert parse(success(MessageId="²")).message_id is None
    assert parse(success(MessageId="9" * 5000)).message_id is None


def test_error_response() -> None:
    result = parse(error("FailedOperation.DeviceOffline", "device offline"))
    assert not result.ok
    assert (result.code, result.message) == ("FailedOperation.DeviceOffline", "device offline")
    assert result.error_class is DEVICE and result.http_status == 200
    assert result.message_id is None and result.reply_base64 is None


def test_invalid_token_error_is_fatal() -> None:
    result = parse(error("InvalidParameterValue.InvalidAccessToken", "token expired"))
    assert (result.ok, result.error_class) == (False, FATAL)


def test_error_without_code_is_a_protocol_error() -> None:
    result = parse({"Response": {"Error": {"Message": "x"}}})
    assert (result.code, result.error_class) == ("Protocol.UnexpectedShape", TRANSIENT)
    assert parse({"Response": {"Error": "oops"}}).code == "Protocol.UnexpectedShape"


def test_wrapped_success() -> None:
    data = success()["Response"]
    result = parse({"code": 0, "msg": "", "data": data})
    assert result.ok and (result.message_id, result.reply_text) == (74, "ABCD")


def test_wrapped_success_holding_a_response_object() -> None:
    assert parse({"code": 0, "msg": "", "data": success()}).reply_text == "ABCD"


def test_wrapped_error_uses_data_error_code() -> None:
    body = {"code": 1002, "msg": "fail", "data": error("FailedOperation.RRPCTimeout")["Response"]}
    result = parse(body)
    assert (result.ok, result.code, result.error_class) == (
        False,
        "FailedOperation.RRPCTimeout",
        DEVICE,
    )
    body["code"] = 0  # data.Error is a failure even with code 0
    assert parse(body).code == "FailedOperation.RRPCTimeout"


def test_wrapped_nonzero_code_without_error() -> None:
    result = parse({"code": 1001, "msg": "token invalid?", "data": None})
    assert (result.ok, result.code, result.message) == (False, "RemoteError.1001", "token invalid?")
    assert result.error_class is DEVICE
    assert parse({"code": "E42", "msg": "x"}).code == "RemoteError.E42"


def test_wrapped_zero_code_without_data_is_a_protocol_error() -> None:
    assert parse({"code": 0, "msg": ""}).code == "Protocol.UnexpectedShape"


@pytest.mark.parametrize("body", [[1, 2], "text", 42, None, True])
def test_json_that_is_not_an_object(body: Any) -> None:
    result = parse(body)
    assert (result.ok, result.code, result.error_class) == (
        False,
        "Protocol.UnexpectedShape",
        TRANSIENT,
    )


@pytest.mark.parametrize(
    "body", [{"foo": 1}, {}, {"Response": None}, {"Response": [1]}, {"Response": "x"}]
)
def test_object_without_a_response_object(body: Any) -> None:
    assert parse(body).code == "Protocol.UnexpectedShape"


@pytest.mark.parametrize("body", [b"", b"OK", b"{not json", b"\xff\xfe\x00", b"<html>hi</html>"])
def test_non_json_body_with_200(body: bytes) -> None:
    result = parse(body)
    assert (result.ok, result.code, result.error_class) == (
        False,
        "Protocol.NonJSONBody",
        TRANSIENT,
    )
    assert result.http_status == 200


def test_html_502_page() -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        + b"<!-- padding -->" * 200
        + b"</body>\r\n</html>\r\n"
    )
    result = parse(page, status=502, headers={"Content-Type": "text/html"})
    assert (result.ok, result.code, result.error_class) == (False, "HTTP.502", TRANSIENT)
    assert result.http_status == 502
    assert result.message == "HTTP 502 Bad Gateway: 502 Bad Gateway"


def test_long_bodies_give_short_single_line_messages() -> None:
    result = parse(b"x" * 5000 + b"\n\x1b[31mred", status=500)
    assert result.message is not None and len(result.message) < 240
    result = parse(b"line1\n\x1b[2Jline2\tend")
    assert result.message == "response is not JSON: line1 [2Jline2 end"
    long_message = parse(error("InternalError", "m" * 5000)).message
    assert long_message is not None and len(long_message) <= 200


def test_429_with_retry_after_seconds() -> None:
    result = parse(b"Too Many Requests", status=429, headers={"Retry-After": "7"})
    assert (result.code, result.error_class, result.retry_after) == ("HTTP.429", TRANSIENT, 7.0)


def test_429_with_retry_after_http_date() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
    headers = {"retry-after": "Sat, 28 Nov 2026 12:00:30 GMT"}  # lower case: still found
    result = parse(b"", status=429, headers=headers, now=now)
    assert result.retry_after == 30.0


def test_429_with_an_api_error_body_keeps_the_api_code() -> None:
    result = parse(error("RequestLimitExceeded"), status=429, headers={"Retry-After": "2"})
    assert (result.code, result.error_class, result.retry_after) == (
        "RequestLimitExceeded",
        TRANSIENT,
        2.0,
    )
    assert result.http_status == 429


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "HTTP.400", DEVICE),
        (401, "HTTP.401", FATAL),
        (403, "HTTP.403", FATAL),
        (404, "HTTP.404", FATAL),
        (413, "HTTP.413", DEVICE),
        (500, "HTTP.500", TRANSIENT),
        (503, "HTTP.503", TRANSIENT),
    ],
)
def test_http_error_statuses(status: int, code: str, cls: ErrorClass) -> None:
    result = parse(b'{"message": "nope"}', status=status)
    assert (result.ok, result.code, result.error_class, result.http_status) == (
        False,
        code,
        cls,
        status,
    )


def test_success_body_with_an_error_status_is_not_a_success() -> None:
    result = parse(success(), status=503)
    assert (result.ok, result.code, result.error_class) == (False, "HTTP.503", TRANSIENT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  3 ", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Fri, 27 Nov 2026 12:00:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after(value, now) == expected


API_KEYS = [
    *("Response", "Error", "Code", "Message", "MessageId", "PayloadBase64", "RequestId"),
    *("code", "msg", "data", "x"),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(API_KEYS), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(status=st.integers(100, 599), value=json_values, retry_after=st.text(max_size=30))
def test_parse_response_never_raises_on_json(status: int, value: Any, retry_after: str) -> None:
    body = json.dumps(value).encode()
    result = parse_response(status, {"Retry-After": retry_after}, body, RID)
    assert result.ok == (result.code is None) == (result.error_class is None)


@settings(max_examples=200, deadline=None)
@given(status=st.integers(100, 599), body=st.binary(max_size=300))
def test_parse_response_never_raises_on_bytes(status: int, body: bytes) -> None:
    parse_response(status, {}, body, RID)


# --------------------------------------------------------------------------- redact, settings


def test_redact() -> None:
    assert redact(f"a {TOKEN} b {TOKEN}", [TOKEN]) == "a *** b ***"
    assert redact("abc", ["", "b"]) == "a***c"
    assert redact("abcd", ["bc", "abcd"]) == "***"


def test_resolve_token_from_env() -> None:
    assert resolve_token({"RRPCSYNC_ACCESS_TOKEN": f"  {TOKEN}\n"}, None) == TOKEN


@pytest.mark.parametrize("env", [{}, {"RRPCSYNC_ACCESS_TOKEN": "  \n"}])
def test_resolve_token_missing(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_token(env, None)
    assert str(caught.value) == (
        "no access token: set RRPCSYNC_ACCESS_TOKEN or pass --access-token-file"
    )


def test_resolve_token_file_wins_and_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"\n  {TOKEN}  \n")
    assert resolve_token({"RRPCSYNC_ACCESS_TOKEN": "from-env"}, str(path)) == TOKEN


def test_resolve_token_file_problems_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + TOKEN.encode())
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(empty): "is empty",
        str(binary): "not UTF-8",
        str(tmp_path): "cannot read",  # a directory
    }
    for path, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            resolve_token({"RRPCSYNC_ACCESS_TOKEN": TOKEN}, path)
        assert path in str(caught.value) and expected in str(caught.value)
        assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        DEFAULT_ENDPOINT,
        "HTTPS://example.com/api",
        "http://127.0.0.1:8080/api",
        "http://127.4.5.6/api",
        "http://[::1]:8080/api",
        "http://localhost:9000",
        "http://LOCALHOST/",
    ],
)
def test_check_endpoint_accepts(url: str) -> None:
    assert check_endpoint(url, allow_insecure=False) == []


@pytest.mark.parametrize("url", ["http://example.com/api", "http://10.0.0.1/", "http://128.0.0.1"])
def test_check_endpoint_refuses_clear_text(url: str) -> None:
    with pytest.raises(ConfigError, match="https"):
        check_endpoint(url, allow_insecure=False)
    warnings = check_endpoint(url, allow_insecure=True)
    assert len(warnings) == 1 and "clear text" in warnings[0]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "example.com/api",
        "ftp://example.com/",
        "https://",
        "http://[::1",
        "https://host:99999/",
        "https://exa mple.com/",
    ],
)
def test_check_endpoint_refuses_malformed(url: str) -> None:
    with pytest.raises(ConfigError, match="malformed"):
        check_endpoint(url, allow_insecure=True)


def test_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert env_proxy("https", "example.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert env_proxy("https", "example.com") == "http://proxy.local:3128"
    assert env_proxy("https", "internal.example") is None
    assert env_proxy("http", "127.0.0.1") is None
    assert env_proxy("http", "localhost") is None


# --------------------------------------------------------------------------- network


class FakeCloud:
    """A tiny stand-in for the API with one route per behaviour under test."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.peers: set[tuple[str, int]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/ok": self.ok,
            "/slow": self.slow,
            "/reset": self.reset,
            "/hangup": self.hangup,
            "/truncated": self.truncated,
            "/html502": self.html502,
            "/ratelimited": self.ratelimited,
            "/garbage": self.garbage,
            "/echo-token": self.echo_token,
            "/huge": self.huge,
        }
        for path, handler in routes.items():
            app.router.add_post(path, handler)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        return body

    async def ok(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        reply = base64.b64encode(f"ack {body['Payload']}".encode()).decode()
        return web.json_response(
            {"Response": {"MessageId": 74, "PayloadBase64": reply, "RequestId": body["RequestId"]}}
        )

    async def slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(10)  # cancelled when the client goes away
        return web.json_response({})

    async def reset(self, request: web.Request) -> web.Response:
        await self._record(request)
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()  # RST: "connection reset by peer"
        await asyncio.sleep(10)
        return web.Response()

    async def hangup(self, request: web.Request) -> web.Response:
        await self._record(request)
        assert request.transport is not None
        request.transport.close()  # no response at all
        await asyncio.sleep(10)
        return web.Response()

    async def truncated(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Length": "500", **JSON})
        await response.prepare(request)
        await response.write(b'{"Response": {"MessageId": 7')
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(10)
        return response

    async def html502(self, request: web.Request) -> web.Response:
        await self._record(request)
        page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
        return web.Response(status=502, text=page, content_type="text/html")

    async def ratelimited(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        error = {"Code": "RequestLimitExceeded", "Message": "slow down"}
        payload = {"Response": {"Error": error, "RequestId": body["RequestId"]}}
        return web.json_response(payload, status=429, headers={"Retry-After": "3"})

    async def garbage(self, request: web.Request) -> web.Response:
        await self._record(request)
        assert request.transport is not None
        request.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
        request.transport.close()
        await asyncio.sleep(10)
        return web.Response()

    async def echo_token(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        message = f"token {body['AccessToken']} is not valid"
        error = {"Code": "InvalidParameterValue.InvalidAccessToken", "Message": message}
        return web.json_response({"Response": {"Error": error, "RequestId": body["RequestId"]}})

    async def huge(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(body=b"[" + b"1," * (1 << 20) + b"1]", content_type="application/json")


@contextlib.asynccontextmanager
async def serve(cloud: FakeCloud) -> AsyncIterator[str]:
    runner = web.AppRunner(
        cloud.app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


Scenario = Callable[[str, FakeCloud], Awaitable[Any]]


def run_scenario(scenario: Scenario) -> tuple[Any, FakeCloud]:
    cloud = FakeCloud()

    async def main() -> Any:
        async with serve(cloud) as url:
            return await scenario(url, cloud)

    return asyncio.run(main()), cloud


def publish_to(route: str, *, timeout: float = 5.0, **kw: Any) -> tuple[ApiResult, FakeCloud]:
    async def scenario(url: str, cloud: FakeCloud) -> ApiResult:
        async with RrpcClient(url + route, TOKEN, timeout=timeout, **kw) as client:
            return await client.publish("ASBHKN", "dev-001", '{"a":1}', RID)

    result, cloud = run_scenario(scenario)
    assert isinstance(result, ApiResult)
    return result, cloud


def test_publish_success_sends_the_documented_request() -> None:
    result, cloud = publish_to("/ok")
    assert result.ok and result.message_id == 74 and result.reply_text == 'ack {"a":1}'
    assert result.request_id == RID and result.http_status == 200 and result.elapsed > 0
    assert cloud.requests == [
        {
            "Action": "AppPublishRRPCMessage",
            "RequestId": RID,
            "AccessToken": TOKEN,
            "ProductId": "ASBHKN",
            "DeviceName": "dev-001",
            "Payload": '{"a":1}',
        }
    ]
    headers = cloud.headers[0]
    assert headers["User-Agent"] == f"rrpcsync/{__version__}"
    assert headers["Content-Type"] == "application/json"


def test_publish_generates_a_uuid_request_id_and_sends_utf8() -> None:
    async def scenario(url: str, cloud: FakeCloud) -> ApiResult:
        async with RrpcClient(url + "/ok", TOKEN, user_agent="custom/1") as client:
            return await client.publish("P", "d", "温度=21")

    result, cloud = run_scenario(scenario)
    assert uuid.UUID(result.request_id).version == 4
    assert cloud.requests[0]["RequestId"] == result.request_id
    assert cloud.requests[0]["Payload"] == "温度=21" and result.reply_text == "ack 温度=21"
    assert cloud.headers[0]["User-Agent"] == "custom/1"


def test_publish_reuses_pooled_connections() -> None:
    async def scenario(url: str, cloud: FakeCloud) -> list[ApiResult]:
        async with RrpcClient(url + "/ok", TOKEN, max_connections=3) as client:
            first = [await client.publish("P", f"d{i}", "x") for i in range(5)]
            rest = await asyncio.gather(*(client.publish("P", f"e{i}", "x") for i in range(30)))
            return first + list(rest)

    results, cloud = run_scenario(scenario)
    assert all(r.ok for r in results) and len(cloud.requests) == 35
    assert len(cloud.peers) <= 3


@pytest.mark.parametrize(
    ("route", "code"),
    [
        ("/reset", "Transport.ReadError"),
        ("/hangup", "Transport.ProtocolError"),
        ("/truncated", "Transport.ProtocolError"),
        ("/garbage", "Transport.ProtocolError"),
    ],
)
def test_publish_maps_broken_connections(route: str, code: str) -> None:
    result, cloud = publish_to(route)
    assert (result.ok, result.code, result.error_class) == (False, code, TRANSIENT)
    assert result.http_status is None and result.request_id == RID
    assert result.message and len(result.message) <= 200
    assert len(cloud.requests) == 1


def test_publish_times_out() -> None:
    result, _ = publish_to("/slow", timeout=0.3)
    assert (result.ok, result.code, result.error_class) == (False, "Transport.Timeout", TRANSIENT)
    assert 0.25 < result.elapsed < 2.0


def test_publish_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the client connects

    async def main() -> ApiResult:
        async with RrpcClient(f"http://127.0.0.1:{port}/api", TOKEN, timeout=2) as client:
            return await client.publish("P", "d", "x", RID)

    result = asyncio.run(main())
    assert (result.ok, result.code, result.error_class) == (
        False,
        "Transport.ConnectError",
        TRANSIENT,
    )


def test_publish_html_502() -> None:
    result, _ = publish_to("/html502")
    assert (result.code, result.error_class, result.http_status) == ("HTTP.502", TRANSIENT, 502)
    assert result.message == "HTTP 502 Bad Gateway: 502 Bad Gateway"


def test_publish_rate_limited() -> None:
    result, _ = publish_to("/ratelimited")
    assert (result.code, result.error_class, result.http_status, result.retry_after) == (
        "RequestLimitExceeded",
        TRANSIENT,
        429,
        3.0,
    )


def test_publish_cuts_huge_bodies() -> None:
    result, _ = publish_to("/huge")
    assert (result.code, result.error_class) == ("Protocol.NonJSONBody", TRANSIENT)


def test_token_never_logged_or_returned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rrpcsync.client")
    results = [publish_to(route)[0] for route in ("/ok", "/echo-token", "/html502", "/reset")]
    assert '"AccessToken": "***"' in caplog.text
    assert "HTTP.502" in caplog.text and "Transport.ReadError" in caplog.text
    assert TOKEN not in caplog.text
    for result in results:
        assert TOKEN not in repr(result)
    echoed = results[1]
    assert echoed.error_class is FATAL and echoed.message == "token *** is not valid"


def test_cancellation_propagates() -> None:
    async def scenario(url: str, cloud: FakeCloud) -> None:
        async with RrpcClient(url + "/slow", TOKEN) as client:
            task = asyncio.create_task(client.publish("P", "d", "x"))
            while not cloud.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run_scenario(scenario)


class RaisingTransport(httpx.AsyncBaseTransport):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise self.exc


def publish_via(exc: Exception) -> ApiResult:
    async def main() -> ApiResult:
        async with RrpcClient(DEFAULT_ENDPOINT, TOKEN, transport=RaisingTransport(exc)) as client:
            return await client.publish("P", "d", "x", RID)

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("refused"), "Transport.ConnectError"),
        (httpx.ConnectTimeout("slow"), "Transport.Timeout"),
        (httpx.PoolTimeout("busy"), "Transport.Timeout"),
        (httpx.ReadError("reset"), "Transport.ReadError"),
        (httpx.WriteError("broken pipe"), "Transport.WriteError"),
        (httpx.RemoteProtocolError("bad"), "Transport.ProtocolError"),
        (httpx.ProxyError("proxy"), "Transport.Error"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "Transport.ReadError"),
        (aiohttp.ServerDisconnectedError(), "Transport.ProtocolError"),
        (aiohttp.SocketTimeoutError(), "Transport.Timeout"),
        (ConnectionResetError(104, "reset"), "Transport.Error"),
        (TimeoutError(), "Transport.Timeout"),
    ],
)
def test_network_exceptions_of_any_transport_become_results(exc: Exception, code: str) -> None:
    result = publish_via(exc)
    assert (result.ok, result.code, result.error_class) == (False, code, TRANSIENT)
    assert transport_error_code(exc) == code


def test_transport_error_messages_are_redacted() -> None:
    result = publish_via(httpx.ReadError(f"failed near {TOKEN}"))
    assert result.message == "failed near ***"


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("bug"), RuntimeError("bug")])
def test_programming_errors_propagate(exc: Exception) -> None:
    with pytest.raises(type(exc)):
        publish_via(exc)
    assert transport_error_code(exc) is None


def test_plain_httpx_transport_gives_the_same_codes() -> None:
    async def scenario(url: str, cloud: FakeCloud) -> list[str | None]:
        codes = []
        for route in ("/ok", "/reset", "/truncated", "/html502"):
            transport = httpx.AsyncHTTPTransport()
            async with RrpcClient(url + route, TOKEN, transport=transport) as client:
                codes.append((await client.publish("P", "d", "x")).code)
        return codes

    codes, _ = run_scenario(scenario)
    assert codes == [None, "Transport.ReadError", "Transport.ProtocolError", "HTTP.502"]


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def publish_over_tls(cert: Path, key: Path) -> tuple[ApiResult, FakeCloud]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def main(cloud: FakeCloud) -> ApiResult:
        runner = web.AppRunner(cloud.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with RrpcClient(f"https://127.0.0.1:{port}/ok", TOKEN) as client:
                return await client.publish("P", "d", "x", RID)
        finally:
            await runner.cleanup()

    cloud = FakeCloud()
    return asyncio.run(main(cloud)), cloud


def test_tls_is_verified(self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    result, cloud = publish_over_tls(*self_signed)
    assert (result.ok, result.code, result.error_class) == (
        False,
        "Transport.CertificateError",
        FATAL,
    )
    assert cloud.requests == []  # the token never left


def test_tls_trusts_ssl_cert_file(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
    result, cloud = publish_over_tls(*self_signed)
    assert result.ok and cloud.requests[0]["AccessToken"] == TOKEN
