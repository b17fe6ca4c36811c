"""One error shape for every route, the one the OpenAI client understands:
``{"error": {"message", "type", "param", "code"}}`` with a meaningful HTTP status."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: _ErrorDetail


_WHY = {400: "over a cap or the context length, or a request bigger than a whole quota",
        401: "missing or wrong API key, or a forged or expired feedback_token",
        403: "not allowed: another key's answer, or `user` from an untrusted key",
        404: "unknown model or response id", 413: "request body over RLHF_MAX_REQUEST_BYTES",
        422: "malformed body", 429: "over a rate limit (see Retry-After)",
        503: "Redis unavailable, or the answer not written to it yet (see Retry-After)"}


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` for a route: the error shape under each status it can answer."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in codes}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)
        self.headers = headers or {}


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(errors) -> tuple[str, str | None]:
    """'field: problem; ...' and the first field, from pydantic/FastAPI error dicts."""
    parts, first_param = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        where = ".".join(loc) or "body"
        first_param = first_param or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request body", first_param


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                          headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """The app's error shape for every error (serving/direct_routes.py answers its routes'
    errors with the same two functions)."""
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param = describe_validation(exc.errors())
        return error_response(422, message, "invalid_request_error", "invalid_body", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return http_error_response(exc)
