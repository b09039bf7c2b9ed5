"""Configuration: environment variables (and an explicit .env file), overridden by CLI flags."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_GATEWAY_URL = "https://gateway.pixazo.ai"
APP_NAME = "mmaudio-mcp"

logger = logging.getLogger(__name__)

_CLAMPED: Final = {
    "spend_cap": ("MMAUDIO_SPEND_CAP", "a number"),
    "spend_window_minutes": ("MMAUDIO_SPEND_WINDOW_MINUTES", "a number"),
    "lease_seconds": ("MMAUDIO_LEASE_SECONDS", "a number of seconds"),
}
"""Numbers an operator tunes: out of range is clamped into it, and a value that is not a number is ignored (with a
warning) for the default, rather than stopping the server."""


def _default_output_dir() -> Path:
    from platformdirs import user_music_path

    return user_music_path() / APP_NAME


def _default_state_dir() -> Path:
    from platformdirs import user_state_path

    return user_state_path(APP_NAME)


class Transport(StrEnum):
    """How hosts reach the server. stdio is what desktop and IDE hosts spawn; the others serve many clients."""

    STDIO = "stdio"
    SSE = "sse"
    STREAMABLE_HTTP = "streamable-http"

    @property
    def path(self) -> str:
        """Where an HTTP transport serves MCP (the SDK's paths); empty for stdio."""
        return {Transport.SSE: "/sse", Transport.STREAMABLE_HTTP: "/mcp"}.get(self, "")


class Settings(BaseSettings):
    """Everything the server reads from its environment. Nothing is read at import time."""

    # case_sensitive: only the documented upper-case names are read, never a generic PORT or HOST.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True, case_sensitive=True)

    api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("PIXAZO_API_KEY", "api_key"))
    gateway_url: str = Field(
        default=DEFAULT_GATEWAY_URL, validation_alias=AliasChoices("PIXAZO_GATEWAY_URL", "gateway_url")
    )
    output_dir: Path = Field(
        default_factory=_default_output_dir, validation_alias=AliasChoices("MMAUDIO_OUTPUT_DIR", "output_dir")
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir, validation_alias=AliasChoices("MMAUDIO_STATE_DIR", "state_dir")
    )
    wait_seconds: float = Field(
        default=40.0, ge=0, le=300, validation_alias=AliasChoices("MMAUDIO_WAIT_SECONDS", "wait_seconds")
    )
    http_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MMAUDIO_HTTP_TOKEN", "http_token")
    )
    transport: Transport = Field(
        default=Transport.STDIO, validation_alias=AliasChoices("MMAUDIO_TRANSPORT", "transport")
    )
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("MMAUDIO_HOST", "host"))
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("MMAUDIO_PORT", "port"))
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str],
        validation_alias=AliasChoices("MMAUDIO_ALLOWED_HOSTS", "allowed_hosts"),
        description="Extra Host names (comma-separated) the HTTP transports answer to, e.g. behind a proxy.",
    )
    public_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MMAUDIO_PUBLIC_URL", "public_url"),
        description="Where Pixazo can reach this server over HTTP(S); enables webhooks instead of frequent polls.",
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MMAUDIO_DATABASE_URL", "database_url"),
        description="postgresql://... : keep jobs in PostgreSQL, shared by replicas (needs the [postgres] extra).",
    )
    storage_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MMAUDIO_STORAGE_URL", "storage_url"),
        description="s3://bucket/prefix : keep the audio in S3-compatible storage, shared by replicas ([s3] extra).",
    )
    request_state_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MMAUDIO_REQUEST_STATE_KEY", "request_state_key"),
        description="A secret of at least 32 characters shared by every replica: a request's sealed state (a "
        "2026-07-28 client's roots, asked for in a second round trip) made on one replica opens on another.",
    )
    stateless: bool = Field(
        default=False,
        validation_alias=AliasChoices("MMAUDIO_STATELESS", "stateless"),
        description="Serve streamable HTTP without per-process sessions (replicas behind a load balancer).",
    )

    spend_cap: int = Field(
        default=60,
        ge=0,
        le=1_000_000,
        validation_alias=AliasChoices("MMAUDIO_SPEND_CAP", "spend_cap"),
        description="At most this many paid jobs per Pixazo key in any spend window; 0 turns the guard off.",
    )
    spend_window_minutes: float = Field(
        default=60.0,
        ge=0.1,
        le=7 * 24 * 60,
        validation_alias=AliasChoices("MMAUDIO_SPEND_WINDOW_MINUTES", "spend_window_minutes"),
        description="The spend window, in minutes.",
    )
    lease_seconds: float = Field(
        default=20.0,
        ge=0.5,
        le=600.0,
        validation_alias=AliasChoices("MMAUDIO_LEASE_SECONDS", "lease_seconds"),
        description="How long a job's lease lasts without renewal: a dead process's jobs are taken over that much "
        "later.",
    )
    presign_seconds: float = Field(
        default=0.0,
        validation_alias=AliasChoices("MMAUDIO_PRESIGN_SECONDS", "presign_seconds"),
        description="With MMAUDIO_STORAGE_URL: results carry a presigned GET URL of the audio, valid this long "
        "(0: none).",
    )

    @property
    def stateless_http(self) -> bool:
        """Whether streamable HTTP runs without sessions: asked for, or implied by a shared database (replicas)."""
        return self.stateless or self.database_url is not None

    allowed_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list[Path],
        validation_alias=AliasChoices("MMAUDIO_ALLOWED_DIRS", "allowed_dirs"),
        description="Extra folders (separated like PATH) an absolute `folder` may point into when the client offers "
        "no workspace roots.",
    )

    @field_validator("allowed_dirs", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator(
        "api_key", "http_token", "public_url", "database_url", "storage_url", "request_state_key", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("request_state_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError(
                "MMAUDIO_REQUEST_STATE_KEY must be at least 32 characters of secret randomness (for example the "
                'output of python -c "import secrets; print(secrets.token_hex(32))")'
            )
        return value

    @field_validator("spend_cap", "spend_window_minutes", "lease_seconds", mode="before")
    @classmethod
    def _clamp(cls, value: Any, info: ValidationInfo) -> Any:
        field_name = info.field_name or ""
        name, what = _CLAMPED[field_name]
        field = cls.model_fields[field_name]
        default = field.default
        if isinstance(value, str):
            raw = value.strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                logger.warning("ignoring %s=%r: not %s", name, raw, what)
                return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            low, high = _bounds(field.metadata)
            return type(default)(min(max(value, low), high))
        return value

    @field_validator("presign_seconds", mode="before")
    @classmethod
    def _blank_is_zero(cls, value: Any) -> Any:
        return 0.0 if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

    @field_validator("gateway_url", "public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @field_validator("output_dir", "state_dir")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()


def _bounds(metadata: list[Any]) -> tuple[float, float]:
    """A field's ge/le bounds, from its Field(...) metadata."""
    low = next(m.ge for m in metadata if getattr(m, "ge", None) is not None)
    high = next(m.le for m in metadata if getattr(m, "le", None) is not None)
    return float(low), float(high)


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (and env_file, if given), with non-None overrides taking precedence."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return Settings(_env_file=env_file, **given)  # pyright: ignore[reportCallIssue]


__all__ = ["DEFAULT_GATEWAY_URL", "Settings", "Transport", "load_settings"]
