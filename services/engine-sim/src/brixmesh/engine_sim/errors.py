"""OpenAI-style error bodies, as vLLM returns them."""

from __future__ import annotations

import msgspec
from starlette.responses import Response


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, error_type: str = "BadRequestError", param: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def response(self) -> Response:
        return error_response(self.status, self.message, self.error_type, self.param)


def error_body(status: int, message: str, error_type: str, param: str | None = None) -> bytes:
    return msgspec.json.encode(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    )


def error_response(status: int, message: str, error_type: str, param: str | None = None) -> Response:
    return Response(error_body(status, message, error_type, param), status, media_type="application/json")


def model_not_found(name: str, valid: list[str]) -> ApiError:
    return ApiError(
        404,
        f"The model `{name}` does not exist. Valid aliases: {', '.join(valid)}.",
        "NotFoundError",
        "model",
    )
