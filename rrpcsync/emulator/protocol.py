"""Wire format of AppPublishRRPCMessage: request checks and the two response shapes."""

from __future__ import annotations

import json
import uuid
from json.encoder import encode_basestring_ascii
from typing import Any

ACTION = "AppPublishRRPCMessage"
PAYLOAD_LIMIT = 65536  # bytes of UTF-8: the MQTT message limit

INVALID_PARAMETER = "InvalidParameterValue"
ACTION_NOT_FOUND = "InvalidParameterValue.ActionNotFound"
INVALID_TOKEN = "InvalidParameterValue.InvalidAccessToken"
PAYLOAD_OVER_LIMIT = "InvalidParameterValue.PayloadOverLimit"
DEVICE_NOT_EXIST = "ResourceNotFound.DeviceNotExist"
REQUEST_LIMIT = "RequestLimitExceeded"
INTERNAL_ERROR = "InternalError"
DEVICE_OFFLINE = "FailedOperation.DeviceOffline"
NO_SUBSCRIPTION = "FailedOperation.DeviceNoSubscription"
RRPC_TIMEOUT = "FailedOperation.RRPCTimeout"

REQUIRED_FIELDS = ("RequestId", "ProductId", "DeviceName", "Payload")

_encode = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: safe for any str
_decode = json.JSONDecoder().decode
_quote = encode_basestring_ascii  # a JSON string literal, in C: the success path is hot


class ApiError(Exception):
    """An error answer of the API (sent with HTTP 200, like the cloud does)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def parse_request(body: bytes) -> dict[str, Any]:
    try:
        request = _decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(INVALID_PARAMETER, "the request body is not valid JSON") from None
    if not isinstance(request, dict):
        raise ApiError(INVALID_PARAMETER, "the request body must be a JSON object")
    return request


def check_action(request: dict[str, Any]) -> None:
    action = request.get("Action")
    if action != ACTION:
        raise ApiError(ACTION_NOT_FOUND, f"the action {action!r} is not found; use {ACTION}")


def check_token(request: dict[str, Any], token: str | None, expired: bool) -> str | None:
    """None when the request carries the fleet's fixed `token` (and it has not expired);
    otherwise the token given, for the login desk to check."""
    given = request.get("AccessToken")
    if not isinstance(given, str) or not given:
        raise ApiError(INVALID_TOKEN, "AccessToken is missing")
    if given != token:
        return given
    if expired:
        raise ApiError(INVALID_TOKEN, "token expired")
    return None


def required_strings(request: dict[str, Any]) -> tuple[str, str, str]:
    """ProductId, DeviceName and Payload, after checking every required field."""
    for name in REQUIRED_FIELDS:
        value = request.get(name)
        if not isinstance(value, str):
            problem = "is missing" if value is None else "must be a string"
            raise ApiError(INVALID_PARAMETER, f"the parameter {name} {problem}")
        if not value and name != "Payload":
            raise ApiError(INVALID_PARAMETER, f"the parameter {name} must not be empty")
    payload: str = request["Payload"]
    try:
        size = len(payload.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
        raise ApiError(INVALID_PARAMETER, "the parameter Payload is not valid UTF-8") from None
    if size > PAYLOAD_LIMIT:
        raise ApiError(PAYLOAD_OVER_LIMIT, f"the payload is {size} bytes, over {PAYLOAD_LIMIT}")
    return request["ProductId"], request["DeviceName"], payload


def new_request_id() -> str:
    return str(uuid.uuid4())


def success_body(
    wrapped: bool, message_id: int | None, payload_base64: str | None, request_id: str
) -> bytes:
    fields = (
        f'{{"MessageId":{"null" if message_id is None else int(message_id)},'
        f'"PayloadBase64":{"null" if payload_base64 is None else _quote(payload_base64)},'
        f'"RequestId":{_quote(request_id)}}}'
    )
    if wrapped:
        return f'{{"code":0,"msg":"","data":{fields}}}'.encode()
    return f'{{"Response":{fields}}}'.encode()


def error_body(wrapped: bool, error: ApiError, request_id: str) -> bytes:
    fields = {"Error": {"Code": error.code, "Message": error.message}, "RequestId": request_id}
    if wrapped:
        document: dict[str, Any] = {"code": 1, "msg": error.message, "data": fields}
    else:
        document = {"Response": fields}
    return _encode(document).encode("utf-8")


def login_body(wrapped: bool, data: dict[str, Any], request_id: str) -> bytes:
    """A successful AppGetToken: `{"Response": {"Data": {"Token", "ExpireAt"}, "RequestId"}}`."""
    fields = {"Data": data, "RequestId": request_id}
    document: dict[str, Any] = (
        {"code": 0, "msg": "", "data": fields} if wrapped else {"Response": fields}
    )
    return _encode(document).encode("utf-8")
