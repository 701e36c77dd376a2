"""OpenAI-style errors for `t2l serve`: every failure is `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from t2lcli.errors import T2LError


class ApiError(Exception):
    """A client-visible error: raised anywhere in a route, answered as `status` with the OpenAI error body."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param, self.headers = status, message, code, type_, param, headers


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line for the first problem pydantic found in a body (and how many more), and the field it names."""
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        return f"request body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(e.get("msg", "invalid value"))
    if e.get("type") == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to its OpenAI-style answer (never a traceback, never HTML)."""

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.type, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(exc)
        return error_response(400, msg, "invalid_json" if msg.startswith("request body is not valid JSON") else "invalid_value", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = {400: "request body could not be parsed as JSON", 404: "no such route",
               405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, msg, code)

    @app.exception_handler(RecursionError)
    async def _deep(_r: Request, _exc: RecursionError) -> JSONResponse:
        return error_response(400, "request body is nested too deeply", "invalid_json")

    @app.exception_handler(T2LError)
    async def _t2l(_r: Request, exc: T2LError) -> JSONResponse:
        return error_response(400, exc.message + (f" ({exc.hint})" if exc.hint else ""), "invalid_value")

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:  # then re-raised by Starlette; AccessLog logs one line
        return error_response(500, "internal error", "internal_error", "server_error")
