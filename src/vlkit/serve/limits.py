"""`ServeLimits`: the numbers that bound what one client can make `vlkit serve` do.

Each limit answers one way the web app could be exhausted or abused (issue 18, item 2):

- `max_upload_bytes`: a request body over it is refused (413) before it is read; the check runs
  on `Content-Length` and, for bodies without one, on the bytes as they arrive (serve/guard.py).
- `max_pixels`: an image whose header announces more pixels is refused (413) before its pixels
  are decoded; JPEG and JPEG 2000 are first asked to decode at 1/2, 1/4 or 1/8 scale
  (serve/uploads.py), so a huge photo is shrunk instead of refused where the format allows it.
  PIL's own bomb limit (`Image.MAX_IMAGE_PIXELS`, 89 megapixels) is far too high for a server:
  a 450 KB PNG of 12000 x 12000 decodes to 430 MB.
- `max_concurrent` requests run the models at once; up to `max_queue` more wait for a slot (at
  most `queue_timeout_s`); beyond that a request is answered 503 with `Retry-After` at once.
- `max_prompts`: labels x templates of one zero-shot request (each is one text-encoder pass; 1,000
  labels x 80 templates took 34.5 s of CPU).
- `allowed_hosts`: the `Host` header must name one of them (a DNS-rebinding page names its own
  domain); "*" allows any.
- `auth_token`: when set, every /api request must carry it (serve/guard.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["LOOPBACK_HOSTS", "ServeLimits", "default_max_concurrent"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def default_max_concurrent() -> int:
    """One model call per core, at most 4: torch already spreads one call over the cores."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeLimits:
    """Limits of one `vlkit serve` app (see the module docstring for what each one prevents).

    Attributes:
        max_upload_bytes: Largest request body, in bytes.
        max_pixels: Largest decoded image, in pixels (width x height), after JPEG draft scaling.
        max_concurrent: Model calls running at once.
        max_queue: Requests waiting for a model call beyond those; more are answered 503.
        queue_timeout_s: How long a request waits for a slot before it is answered 503.
        retry_after_s: The `Retry-After` of a 503.
        max_prompts: Labels x templates of one zero-shot request.
        allowed_hosts: Host names (or addresses) the `Host` header may name; "*" allows any.
        auth_token: A secret every /api request must carry, or None.
    """

    max_upload_bytes: int = 32_000_000
    max_pixels: int = 40_000_000
    max_concurrent: int = field(default_factory=default_max_concurrent)
    max_queue: int = 32
    queue_timeout_s: float = 60.0
    retry_after_s: int = 2
    max_prompts: int = 2000
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    auth_token: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.max_queue < 0:
            raise ValueError(f"max_queue={self.max_queue}: must be at least 0")
        if self.queue_timeout_s <= 0:
            raise ValueError(f"queue_timeout_s={self.queue_timeout_s}: must be positive")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token is empty: give a secret or None")
