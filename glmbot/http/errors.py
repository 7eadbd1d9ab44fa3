"""Errors as OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, with an HTTP status.

Handlers raise `APIError`; `add_error_handlers` turns it, FastAPI's own errors and anything
unexpected into that shape, so no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as OpenAI's {"error": {"message", "type", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def add_error_handlers(app: FastAPI) -> None:
    """Every error is OpenAI's JSON shape; no traceback ever reaches a client."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        ui = getattr(request.app.state, "web_ui_path", None)
        message = (f"no route {request.method} {request.url.path}; glmbot serves GET /v1/models, "
                   "POST /v1/chat/completions, GET /health, GET /metrics"
                   + (f", and a chat page and adapter dashboard at {ui}/" if ui else "")) \
            if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(message, "invalid_request_error", "not_found" if exc.status_code == 404
                                       else None), status_code=exc.status_code, headers=exc.headers)

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[0]['msg']}", "invalid_request_error"),
                            status_code=400)

    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering a request", exc_info=exc)
        return JSONResponse(error_body("internal server error; the server log has the details", "server_error"),
                            status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
