"""Settings of the HTTP server: the API's limits (operator, via env) and the serving options."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from studio.errors import StudioError
from studio.generate.request import LIMITS


class SettingsError(StudioError, ValueError):
    """An operator setting (environment variable) with a value that is refused (one sentence)."""


@dataclass(frozen=True)
class ApiSettings:
    """Server-side limits within the engine's own (set by the operator, e.g. via env); the
    OpenAPI schema of ``/generate_image`` states them. ``hub_token``: API requests may fetch
    Hub LoRAs with the operator's Hub token (otherwise only admin keys' requests do)."""

    queue_size: int = 4
    max_steps: int = int(LIMITS["steps"].hi)
    max_side: int = int(LIMITS["width"].hi)
    max_images: int = int(LIMITS["num_images"].hi)
    retry_after_s: int = 10
    hub_token: bool = False

    @classmethod
    def from_env(cls) -> ApiSettings:
        """Read ``STUDIO_API_QUEUE``, ``STUDIO_API_MAX_STEPS``, ``STUDIO_API_MAX_SIDE``,
        ``STUDIO_API_MAX_IMAGES``, ``STUDIO_API_RETRY_AFTER`` and ``STUDIO_API_HUB_TOKEN``
        (1/true/yes or 0/false/no)."""
        def num(var: str, default: int) -> int:
            raw = os.environ.get(var)
            if not raw:
                return default
            try:
                v = int(raw)
            except ValueError:
                raise SettingsError(f"{var} must be a whole number (got {raw!r}).") from None
            if v < 1:
                raise SettingsError(f"{var} must be at least 1 (got {v}).")
            return v

        d = cls()
        return cls(queue_size=num("STUDIO_API_QUEUE", d.queue_size),
                   max_steps=num("STUDIO_API_MAX_STEPS", d.max_steps),
                   max_side=num("STUDIO_API_MAX_SIDE", d.max_side),
                   max_images=num("STUDIO_API_MAX_IMAGES", d.max_images),
                   retry_after_s=num("STUDIO_API_RETRY_AFTER", d.retry_after_s),
                   hub_token=_switch("STUDIO_API_HUB_TOKEN"))


def _switch(var: str) -> bool:
    raw = (os.environ.get(var) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{var} must be 1 (on) or 0 (off) (got {raw!r}).")


@dataclass
class ServerOptions:
    """How the one HTTP server runs: the UI's logins and address, and the API's limits.

    ``spaces``: served by a Hugging Face Space, whose page frames the app from another site, so
    Gradio's cross-site cookies stay as they are; elsewhere :class:`studio.security.SiteGuard`
    refuses cross-site requests and makes the session cookie ``SameSite=Lax``."""

    auth: list[tuple[str, str]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 7860
    auth_message: str | None = None
    api_settings: ApiSettings | None = None
    spaces: bool = False
