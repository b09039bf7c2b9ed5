"""Audio in S3-compatible object storage (MMAUDIO_STORAGE_URL), against a real S3 server (moto, in its own
virtualenv; skipped with the reason where it cannot be installed): any replica serves a job's audio, the local
folder is only a cache, writes are create-only and checked by sha256, and remote clients can get a presigned URL."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest

from mmaudio_mcp.errors import LocalStorageError
from mmaudio_mcp.jobs import open_job_service
from mmaudio_mcp.models import GenerationParams
from mmaudio_mcp.objects import ObjectStorage
from tests.conftest import POLICY
from tests.services import S3Server, start_s3

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings


pytestmark = pytest.mark.timeout(300)  # the first run on a machine installs moto into its own virtualenv


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with start_s3() as server:
        yield server


@pytest.fixture
def aws(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


async def test_a_replica_without_the_file_serves_it_from_object_storage(
    aws: S3Server,
    settings: Settings,
    transport: httpx2.ASGITransport,
    sandbox: Sandbox,
) -> None:
    """Replica A downloads the job once and stores it; replica B (same job store, its disk empty) serves the same
    bytes from the bucket, and Pixazo's media is fetched once in all. Results carry a presigned URL of the audio
    (MMAUDIO_PRESIGN_SECONDS) that a remote client can download."""
    replica = settings.model_copy(update={"storage_url": f"s3://{aws.bucket}/team-a", "presign_seconds": 300})

    async with open_job_service(replica, http_transport=transport, policy=POLICY) as first:
        job = await first.generate(GenerationParams(prompt="rain", duration=2), wait_seconds=20)
        done = await first.download(job.request_id)
    assert done.file is not None
    cached = Path(done.file.path)
    original = cached.read_bytes()
    cached.unlink()  # replica B's own disk has never seen it
    async with open_job_service(replica, http_transport=transport, policy=POLICY) as second:
        audio = await second.read_audio(job.request_id)
    assert audio == original
    assert hashlib.sha256(audio).hexdigest() == done.file.sha256
    assert sandbox.stats().media_fetches[job.request_id] == 1
    assert done.audio_url is not None
    async with httpx2.AsyncClient() as http:
        assert (await http.get(done.audio_url)).content == original


async def test_writes_are_create_only_and_reads_are_checked(aws: S3Server, tmp_path: Path) -> None:
    """A second upload under a key never replaces the first; a copy whose sha256 differs is refused and leaves no
    file in the cache; a missing object says so (the caller then fetches from Pixazo)."""
    storage = ObjectStorage(f"s3://{aws.bucket}/checks")
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    first.write_bytes(b"RIFF first take")
    second.write_bytes(b"RIFF a different take")
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    await storage.put("job-1/a.wav", first, sha)
    await storage.put("job-1/a.wav", second, hashlib.sha256(second.read_bytes()).hexdigest())
    assert await storage.fetch("job-1/a.wav", tmp_path / "cache" / "a.wav", sha)
    assert (tmp_path / "cache" / "a.wav").read_bytes() == b"RIFF first take"
    with pytest.raises(LocalStorageError, match="does not match the checksum"):
        await storage.fetch("job-1/a.wav", tmp_path / "cache" / "b.wav", "0" * 64)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.wav"]
    assert not await storage.fetch("job-2/none.wav", tmp_path / "cache" / "c.wav", sha)


async def test_a_presigned_url_downloads_the_audio_where_configured(aws: S3Server, tmp_path: Path) -> None:
    """Remote clients can be handed a time-limited GET URL (MMAUDIO_PRESIGN_SECONDS); none when it is unset."""
    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF presigned")
    unsigned = ObjectStorage(f"s3://{aws.bucket}/signed")
    await unsigned.put("job-3/a.wav", source, hashlib.sha256(source.read_bytes()).hexdigest())
    assert await unsigned.presigned("job-3/a.wav") is None
    url = await ObjectStorage(f"s3://{aws.bucket}/signed", presign_seconds=300).presigned("job-3/a.wav")
    assert url is not None
    assert "X-Amz-Signature=" in url
    async with httpx2.AsyncClient() as http:
        got = await http.get(url)
    assert got.status_code == 200
    assert got.content == b"RIFF presigned"
    assert (await http_status_without_signature(url)) == 403


async def http_status_without_signature(url: str) -> int:
    async with httpx2.AsyncClient() as http:
        return (await http.get(url.split("?", 1)[0])).status_code


def test_a_storage_url_that_is_not_s3_is_refused() -> None:
    from mmaudio_mcp.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="s3://bucket/prefix"):
        ObjectStorage("https://bucket.example/prefix")
