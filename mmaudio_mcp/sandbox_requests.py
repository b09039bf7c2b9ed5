"""Read what clients send the sandbox: submit bodies and webhook headers checked as the API documents them.

Anything refused raises `BadRequest`, whose message the gateway returns with a 400.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from mmaudio_mcp.sandbox_faults import Fault, FaultKind
from mmaudio_mcp.sandbox_jobs import Webhook

if TYPE_CHECKING:
    from starlette.datastructures import Headers
    from starlette.requests import Request

__all__ = [
    "KEY_HEADER",
    "MODEL_ID",
    "SUBMIT_PATH",
    "BadRequest",
    "key_hash",
    "media_origin",
    "parse_fault",
    "parse_json",
    "validate",
    "webhook",
]

MODEL_ID = "mmaudio-v2-text-to-audio"
SUBMIT_PATH = f"/{MODEL_ID}/v1/{MODEL_ID}-request"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
KEY_HASH_CHARS = 12


class BadRequest(ValueError):
    """A body the sandbox refuses with 400; the message says what is wrong."""


def key_hash(key: str) -> str:
    """Return a short sha256 hex prefix of `key`: enough to tell keys apart in statistics, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_HASH_CHARS]


def parse_json(raw: bytes) -> dict[str, object]:
    """Return the JSON object in `raw`."""
    try:
        body: object = json.loads(raw)
    except ValueError:  # covers JSONDecodeError and UnicodeDecodeError
        raise BadRequest("Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    return cast("dict[str, object]", body)


def validate(body: dict[str, object]) -> tuple[str, int, int]:
    """Check a submit body as the API documents it; return the prompt, duration and num_steps."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt is required and must be a non-empty string")
    if not isinstance(body.get("negative_prompt", ""), str):
        raise BadRequest("negative_prompt must be a string")
    num_steps = _integer(body, "num_steps", 25, 10, 100)
    duration = _integer(body, "duration", 8, 2, 30)
    cfg_strength = body.get("cfg_strength", 4.5)
    if isinstance(cfg_strength, bool) or not isinstance(cfg_strength, int | float) or not 1 <= cfg_strength <= 10:
        raise BadRequest("cfg_strength must be a finite number between 1.0 and 10.0")
    if not isinstance(body.get("mask_away_clip", False), bool):
        raise BadRequest("mask_away_clip must be a boolean")
    return prompt, duration, num_steps


def _integer(body: dict[str, object], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer between {low} and {high}")
    return value


def parse_fault(body: dict[str, object]) -> Fault:
    """Return the fault an admin POST to /_sandbox/faults asks for."""
    kind, times = body.get("kind"), body.get("times")
    if kind not in set(FaultKind):
        raise BadRequest(f"kind must be one of: {', '.join(FaultKind)}")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise BadRequest("times must be null or an integer >= 1")
    return Fault(FaultKind(str(kind)), times)


def webhook(headers: Headers) -> Webhook | None:
    """Read X-Webhook-URL and X-Webhook-Mode; refuse a URL that is not https (or http to loopback) or a bad mode."""
    mode = headers.get("X-Webhook-Mode", "terminal").strip().lower()
    if mode not in {"terminal", "sync"}:
        raise BadRequest("X-Webhook-Mode must be terminal or sync")
    url = headers.get("X-Webhook-URL")
    if url is None:
        return None
    if not _webhook_url_ok(url.strip()):
        raise BadRequest("X-Webhook-URL must be an https URL (plain http only to a loopback host)")
    return Webhook(url.strip(), sync=mode == "sync")


def _webhook_url_ok(url: str) -> bool:
    """Accept https to any host, and plain http only to 127.0.0.0/8, ::1 or localhost."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def media_origin(request: Request, configured: str | None) -> str:
    """Return the CDN origin: the configured one, else this request's with localhost and 127.0.0.1 swapped."""
    if configured:
        return configured.rstrip("/")
    host = request.url.hostname or "localhost"
    host = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    port = f":{request.url.port}" if request.url.port else ""
    return f"{request.url.scheme}://{host}{port}"
