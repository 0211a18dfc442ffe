"""One error shape for every failure, OpenAI-style: ``{"error": {"message", "type", "code"}}``.

Clients written for OpenAI (and most others) read ``error.message``; a uniform body also means a
client never has to parse FastAPI's validation format or a plain-text 404.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("diffembed.serve")

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
}


class ApiError(Exception):
    """A client mistake (or a missing resource) with the status and code to answer it with."""

    def __init__(self, status: int, message: str, code: str, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type = type or _TYPES.get(status, "invalid_request_error")


def error_response(status: int, message: str, code: str | None, type: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type or _TYPES.get(status, "invalid_request_error"),
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# pydantic names the union branch in the location ("input.list[constrained-str]"): noise to a client.
_BRANCH = re.compile(r"^(list\[)*(constrained-)?(str|int|bool)\]*$")


def _loc(loc: tuple) -> str:
    parts = [p for p in (loc[1:] if loc and loc[0] == "body" else loc)
             if not (isinstance(p, str) and _BRANCH.match(p))]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def validation_message(errors: list[dict]) -> tuple[str, str]:
    """A short message from pydantic errors (never echoing the input) and its code."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({detail})".replace(" ()", ""), "invalid_json"
    for kind, code in (("token_arrays", "unsupported_input"), ("empty_input", "empty_input")):
        custom = [e for e in errors if e.get("type") == kind]
        if custom:
            return custom[0]["msg"], code
    msgs = []
    for e in errors[:4]:
        where = _loc(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if where == "body" and e.get("type") in ("missing", "model_attributes_type", "dict_type"):
            msg += " (send a JSON object with Content-Type: application/json)"
        msgs.append(f"{where}: {msg}")
    if len(errors) > 4:
        msgs.append(f"and {len(errors) - 4} more")
    return "; ".join(msgs), "invalid_request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, code = validation_message(list(exc.errors()))
        return error_response(400, message, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "internal_error")
