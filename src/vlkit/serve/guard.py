"""`RequestGuard`: the checks every request passes before the app sees it (an ASGI middleware).

In order, each answering in the app's one error shape (serve/errors.py):

1. `Host` must name an allowed host (400). A DNS-rebinding page (attacker.example resolving to
   127.0.0.1) can make the browser talk to the server, but its requests carry its own host name.
2. With an auth token, /api requests must carry it (401): `Authorization: Bearer TOKEN`, or the
   `vlkit_token` cookie that `GET /?token=TOKEN` sets (HttpOnly, SameSite=Strict) before it
   redirects to the page. The page itself holds nothing secret and loads without it.
3. Writes (any method but GET/HEAD/OPTIONS) must be same-origin (403): `Sec-Fetch-Site` must be
   `same-origin` or `none` when sent, and `Origin` (or, without it, `Referer`) must equal this
   server's origin when sent. Browsers send them on every cross-origin POST, so a form on
   another site cannot post an image here; clients that are not browsers (curl, scripts) send
   neither and pass.
4. A body over `max_upload_bytes` is refused (413): by `Content-Length` before anything is
   read, and, when there is none, as soon as the bytes received pass the limit.
5. Model routes are admitted by the `InferenceGate` or answered 503 with `Retry-After`.

Every response also gets headers that keep other sites from framing the page, sniffing types
or embedding the served images (`Cross-Origin-Resource-Policy: same-origin`).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlkit.serve.errors import error_response
from vlkit.serve.gate import Busy, InferenceGate
from vlkit.serve.limits import ServeLimits

__all__ = ["TOKEN_COOKIE", "RequestGuard", "host_name"]

TOKEN_COOKIE = "vlkit_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    ),
]


def host_name(host: str) -> str:
    """The name in a `Host` header, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


class _TooLarge(Exception):
    pass


class RequestGuard:
    """The middleware (see the module docstring).

    Args:
        app: The FastAPI app.
        limits: The server's limits (hosts, token, upload size).
        gate: Admission for the model routes.
        model_routes: Paths whose POSTs run a model.
    """

    def __init__(
        self, app: ASGIApp, limits: ServeLimits, gate: InferenceGate, model_routes: Collection[str]
    ) -> None:
        self.app = app
        self.limits = limits
        self.gate = gate
        self.model_routes = frozenset(model_routes)
        self.allowed = {host_name(h) for h in limits.allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await self.drain(scope, receive)
            await refusal(scope, receive, send_secured)
            return
        admitted = scope["method"] == "POST" and scope["path"] in self.model_routes
        if admitted:
            try:
                self.gate.admit()
            except Busy as busy:
                await self.drain(scope, receive)
                headers = {"Retry-After": str(self.limits.retry_after_s)}
                await error_response(503, busy, headers)(scope, receive, send_secured)
                return
        try:
            await self.counted(scope, receive, send_secured)
        finally:
            if admitted:
                self.gate.leave()

    def refusal(self, scope: Scope) -> Any:
        """The error response for a request refused by checks 1-4, or None."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if "*" not in self.allowed and host_name(host) not in self.allowed:
            return error_response(
                400, f"Host {host!r} is not allowed: start vlkit serve with --allowed-host NAME"
            )
        token = self.limits.auth_token
        if token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if scope["path"] == "/" and "token" in query:
                return self.login(query["token"][0])
            if scope["path"].startswith("/api/") and not self.authorized(headers):
                return error_response(
                    401, "this server needs its token: open the link vlkit serve printed, or "
                    "send 'Authorization: Bearer TOKEN'"
                )  # fmt: skip
        if scope["method"] not in SAFE_METHODS:
            problem = self.cross_origin(headers, f"{scope.get('scheme', 'http')}://{host}")
            if problem:
                return error_response(403, f"cross-origin {scope['method']} refused: {problem}")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, f"Content-Length {length!r} is not a number")
            if int(length) > self.limits.max_upload_bytes:
                return self.too_large(int(length))
        return None

    def too_large(self, size: int | None = None) -> Any:
        limit = self.limits.max_upload_bytes
        what = f"request of {size / 1e6:.1f} MB" if size is not None else "request"
        return error_response(
            413, f"{what}: this server accepts at most {limit / 1e6:g} MB (--max-upload-mb)"
        )

    def authorized(self, headers: Headers) -> bool:
        token = self.limits.auth_token or ""
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            return hmac.compare_digest(given[7:].strip().encode(), token.encode())
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return hmac.compare_digest(unquote(value).encode(), token.encode())
        return False

    def login(self, given: str) -> Any:
        """`GET /?token=...`: sets the cookie and redirects to the page (so the token leaves the
        address bar), or 401."""
        from fastapi.responses import RedirectResponse

        token = self.limits.auth_token or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error_response(401, "wrong token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, quote(token), httponly=True, samesite="strict")
        return response

    @staticmethod
    def cross_origin(headers: Headers, origin: str) -> str | None:
        """Why a write is not same-origin, or None."""
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {site!r}"
        sent = headers.get("origin")
        if sent is not None:
            return None if sent.lower() == origin.lower() else f"Origin {sent!r} is not {origin}"
        referer = headers.get("referer")
        if referer is not None:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() != origin.lower():
                return f"Referer is not on {origin}"
        return None

    async def drain(self, scope: Scope, receive: Receive) -> None:
        """Reads and drops the body (up to 4 x the upload limit) before an early answer: a client
        still sending would otherwise see the connection reset instead of the answer. A client
        that waits for `100 Continue` is answered at once (reading would ask it to send)."""
        if Headers(scope=scope).get("expect", "").lower() == "100-continue":
            return
        seen, budget = 0, 4 * self.limits.max_upload_bytes
        while seen <= budget:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Runs the app, refusing the request (413) once its body passes the upload limit."""
        received, over, started = 0, False, False

        async def receive_counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_upload_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def send_unless_over(message: Message) -> None:
            nonlocal started
            if over:  # the app answered the failed read (FastAPI: 400): answer 413 instead
                return
            started = True
            await send(message)

        with contextlib.suppress(_TooLarge):  # raised from receive_counted: answered below
            await self.app(scope, receive_counted, send_unless_over)
        if over and not started:
            await self.too_large()(scope, receive, send)
