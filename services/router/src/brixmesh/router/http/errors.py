"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """An error the gateway answers with; ``retry_after_s`` adds a ``Retry-After`` header."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code if code is not None else status
        self.retry_after_s = retry_after_s

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after_s is not None:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        return headers


def error_body(message: str, type_: str, param: str | None, code: str | int | None) -> bytes:
    return _encoder.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param)


def sse_error_event(message: str, type_: str = "upstream_error", code: int = 502) -> bytes:
    """The event sent when a stream breaks after its first byte; the OpenAI client raises it as an APIError."""
    return b"data: " + error_body(message, type_, None, code) + b"\n\n"
