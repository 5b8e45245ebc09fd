"""One error shape for every 4xx/5xx of the web app: the status and `{"error": "<one line>"}`.

FastAPI answers with two shapes of its own: `{"detail": "..."}` for `HTTPException` and, for a
request that fails validation, 422 with `{"detail": [<pydantic error objects>]}`, which the page
used to show as raw JSON. `install_error_handlers` replaces both (validation becomes 400 with
the fields named, like every other bad input), and an unexpected exception answers 500 with its
type only, its traceback going to the server's log: a message might hold a server path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["error_response", "install_error_handlers", "one_line", "validation_message"]


def one_line(message: object) -> str:
    """The message with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(message).split())


def error_response(
    status: int, message: object, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The app's one error shape."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Pydantic's error list as one line: "k: Input should be ...; image: Field required"."""
    parts = []
    for error in errors:
        # The location starts with where the value came from ("body", "query", ...).
        location = [str(part) for part in error.get("loc", ())[1:]] or ["request"]
        parts.append(f"{'.'.join(location)}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Answers every HTTP error, validation error and unexpected exception in the one shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(list(error.errors())))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, and uvicorn logs its traceback.
        return error_response(500, f"internal error ({type(error).__name__}): see the server log")
