"""Audio in S3-compatible object storage (`MMAUDIO_STORAGE_URL=s3://bucket/prefix`), shared by every replica.

The replica holding a job's lease downloads the audio once, checks it and uploads it with a create-only put (a
second writer of the same key is refused, as the hard link refuses a second local file). Any replica that is asked
for the audio and lacks it on its disk fetches the object into its local cache (the output folder) and checks its
sha256 against the one recorded in the job's row. A presigned GET URL can be handed to remote clients, for whom a
replica's local path means nothing.

Credentials and region come from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION);
`AWS_ENDPOINT_URL` points at an S3-compatible store (MinIO, Ceph, R2...). obstore is imported only when this
storage is used: install it with `pip install "mmaudio-mcp[s3]"`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from mmaudio_mcp.errors import ConfigurationError, LocalStorageError

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)


def _obstore() -> tuple[Any, Any]:
    try:
        return importlib.import_module("obstore"), importlib.import_module("obstore.store")
    except ImportError as exc:
        raise ConfigurationError(
            "MMAUDIO_STORAGE_URL names object storage, but its client is not installed. Install it with "
            '`pip install "mmaudio-mcp[s3]"` (or unset MMAUDIO_STORAGE_URL to keep audio on local disk).'
        ) from exc


class ObjectStorage:
    """One bucket (and prefix) holding every job's delivered audio, keyed `{request_id}/{file name}`."""

    def __init__(self, url: str, *, endpoint: str | None = None, presign_seconds: float = 0.0) -> None:
        """`presign_seconds` (MMAUDIO_PRESIGN_SECONDS): how long the GET URLs handed to remote clients are valid;
        0 hands out none."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError(
                f"MMAUDIO_STORAGE_URL must look like s3://bucket/prefix (got {url.split('?')[0][:100]!r})."
            )
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint = endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL") or None
        self.presign_seconds = presign_seconds
        self._store: Any = None

    def _client(self) -> Any:
        if self._store is None:
            _, store = _obstore()
            options: dict[str, Any] = {}
            config: dict[str, Any] = {}
            if self.endpoint:
                config |= {"endpoint": self.endpoint, "virtual_hosted_style_request": False}
                options["allow_http"] = self.endpoint.startswith("http://")
            self._store = store.S3Store(
                self.bucket, prefix=self.prefix or None, config=config or None, client_options=options or None
            )
        return self._store

    def key(self, request_id: str, name: str) -> str:
        """Where a job's file lives in the bucket (under the prefix)."""
        return f"{request_id}/{name}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{key}"

    async def put(self, key: str, source: Path, sha256: str) -> None:
        """Upload a checked file once. If the key exists (another replica got there first) it must hold the same
        bytes; a different object under the key is never replaced."""
        obstore, _ = _obstore()
        try:
            await obstore.put_async(self._client(), key, source, mode="create")
        except Exception as exc:
            if type(exc).__name__ != "AlreadyExistsError":
                raise self._error("store", key, exc) from exc
            logger.info("%s is already stored (another replica uploaded it)", self.uri(key))
            return
        logger.info("stored %s (sha256 %s)", self.uri(key), sha256[:12])

    async def fetch(self, key: str, dest: Path, sha256: str) -> bool:
        """Copy the object into the local cache at `dest` (temp file, check, rename); False if it is not there.
        A copy whose sha256 differs from the recorded one is refused."""
        obstore, _ = _obstore()
        try:
            result = await obstore.get_async(self._client(), key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._error("read", key, exc) from exc
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        digest = hashlib.sha256()
        try:
            async with await anyio.open_file(part, "wb") as out:
                async for chunk in result.stream(min_chunk_size=1 << 20):
                    digest.update(chunk)
                    await out.write(chunk)
            if digest.hexdigest() != sha256:
                raise LocalStorageError(
                    f"The stored audio {self.uri(key)} does not match the checksum recorded for it; download_audio "
                    "fetches it from Pixazo again."
                )
            await anyio.Path(part).rename(dest)
        finally:
            with contextlib.suppress(OSError):
                await anyio.Path(part).unlink(missing_ok=True)
        return True

    async def presigned(self, key: str) -> str | None:
        """A time-limited GET URL for remote clients, when MMAUDIO_PRESIGN_SECONDS is set (else None)."""
        if self.presign_seconds <= 0:
            return None
        obstore, _ = _obstore()
        try:
            return await obstore.sign_async(self._client(), "GET", key, timedelta(seconds=self.presign_seconds))
        except Exception as exc:
            raise self._error("sign a URL for", key, exc) from exc

    def _error(self, verb: str, key: str, exc: BaseException) -> LocalStorageError:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return LocalStorageError(
            f"Could not {verb} {self.uri(key)} ({type(exc).__name__}: {detail}). Check MMAUDIO_STORAGE_URL, the "
            "bucket's permissions, AWS_ENDPOINT_URL and the AWS credentials; the job is kept, so download_audio can "
            "be tried again."
        )


__all__ = ["ObjectStorage"]
