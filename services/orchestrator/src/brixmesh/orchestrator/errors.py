"""OpenAI-style JSON errors for the HTTP API: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def error_response(status: int, message: str, *, type: str, param: str | None = None) -> JSONResponse:  # noqa: A002
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": status}}, status_code=status
    )


def invalid_request(message: str, param: str | None = None) -> JSONResponse:
    return error_response(400, message, type="invalid_request_error", param=param)


def not_found(message: str) -> JSONResponse:
    return error_response(404, message, type="not_found_error")
