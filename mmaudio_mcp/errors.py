"""Errors a user of mmaudio-mcp can hit, each with a message a person can act on.

The hierarchy:

    MmaudioError                      kind, retryable, message (never contains a secret)
    ├── ConfigurationError            missing_api_key: the server cannot call Pixazo at all
    ├── InvalidArgumentError          invalid_argument: a tool argument we refuse before any network call
    ├── UnknownJobError               unknown_job: no job with this request_id, here or upstream
    ├── JobNotReadyError              not_ready: the job has not finished, so there is no audio yet
    ├── UpstreamError                 Pixazo answered with an error status
    │   ├── BadRequestError           400
    │   ├── AuthenticationError       401
    │   ├── InsufficientBalanceError  402
    │   ├── ForbiddenError            403
    │   ├── RateLimitedError          429 (carries retry_after)
    │   ├── UpstreamUnavailableError  5xx, or an answer we cannot read
    │   └── UpstreamProtocolError     an answer no retry will fix: unknown status, oversized body, unusable id
    ├── NetworkError                  Pixazo could not be reached (DNS, connect, timeout)
    ├── SubmissionUncertainError      the submit may have reached Pixazo; the job may exist and be billed
    ├── JobFailedError                the job ended FAILED or ERROR upstream
    ├── MediaError                    the audio could not be fetched or is not a usable WAV
    │   ├── MediaTooLargeError        larger than the download cap
    │   └── InvalidAudioError         not a WAV, truncated, or an unsupported encoding
    ├── NotSavedError                 a paid job's audio is on disk, but the copy asked for could not be made
    └── SpendingCapError              the spending guard refused a submit (the key's cap per window is reached)
"""

from __future__ import annotations

from typing import ClassVar


class MmaudioError(Exception):
    """Base class: a failure with a machine-readable kind and an actionable message."""

    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(MmaudioError):
    """The server is not configured to talk to Pixazo."""

    kind = "configuration"


class InvalidArgumentError(MmaudioError):
    """A tool argument was refused before anything was sent."""

    kind = "invalid_argument"


class UnknownJobError(MmaudioError):
    """No job with this request_id is known locally or upstream."""

    kind = "unknown_job"


def unknown_job(request_id: str) -> UnknownJobError:
    """The one answer for a job that does not exist or belongs to another API key: the two are indistinguishable."""
    return UnknownJobError(f"Unknown request_id {request_id[:80]!r}: there is no job with that id for this API key.")


class JobNotReadyError(MmaudioError):
    """The job has not finished yet, so there is no audio to hand over."""

    kind = "not_ready"
    retryable = True


class UpstreamError(MmaudioError):
    """Pixazo answered with an error status."""

    kind = "upstream"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class BadRequestError(UpstreamError):
    """Pixazo rejected the request as malformed (400)."""

    kind = "bad_request"


class AuthenticationError(UpstreamError):
    """Pixazo rejected the API key (401)."""

    kind = "authentication"


class InsufficientBalanceError(UpstreamError):
    """The Pixazo wallet cannot pay for the job (402)."""

    kind = "insufficient_balance"


class ForbiddenError(UpstreamError):
    """The key is valid but not allowed to use this model (403)."""

    kind = "forbidden"


class RateLimitedError(UpstreamError):
    """Pixazo asked us to slow down (429)."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, status_code: int = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class UpstreamUnavailableError(UpstreamError):
    """Pixazo or a gateway in front of it failed (5xx) or answered something unreadable."""

    kind = "upstream_unavailable"
    retryable = True


class UpstreamProtocolError(UpstreamError):
    """Pixazo answered in a way this client cannot use, and asking again the same way will not change it."""

    kind = "upstream_protocol"


class NetworkError(MmaudioError):
    """Pixazo could not be reached."""

    kind = "network"
    retryable = True

    def __init__(self, message: str, *, before_sending: bool = False) -> None:
        super().__init__(message)
        self.before_sending = before_sending


class SubmissionUncertainError(MmaudioError):
    """The submit may have reached Pixazo, so retrying could pay twice."""

    kind = "submission_uncertain"


class JobFailedError(MmaudioError):
    """The job ended FAILED or ERROR upstream."""

    kind = "job_failed"


class MediaError(MmaudioError):
    """The audio file could not be fetched or used."""

    kind = "media"
    retryable = True


class MediaTooLargeError(MediaError):
    """The audio is larger than the download cap."""

    kind = "media_too_large"
    retryable = False


class InvalidAudioError(MediaError):
    """The body is not a complete WAV file in an encoding we can read."""

    kind = "invalid_audio"


class NotSavedError(MmaudioError):
    """The job is paid for and its WAV delivered, but the processed or placed copy could not be made."""

    kind = "not_saved"


class StoreError(MmaudioError):
    """The local job database cannot be used; the message names the file and what to do."""

    kind = "store"


class LocalStorageError(MmaudioError):
    """Audio could not be written on this machine (disk full, read-only folder, no permission)."""

    kind = "local_storage"


class SpendingCapError(MmaudioError):
    """The spending guard refused a submit: the key already paid for its cap of jobs in the rolling window."""

    kind = "spending_cap"


__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ForbiddenError",
    "InsufficientBalanceError",
    "InvalidArgumentError",
    "InvalidAudioError",
    "JobFailedError",
    "JobNotReadyError",
    "LocalStorageError",
    "MediaError",
    "MediaTooLargeError",
    "MmaudioError",
    "NetworkError",
    "NotSavedError",
    "RateLimitedError",
    "SpendingCapError",
    "StoreError",
    "SubmissionUncertainError",
    "UnknownJobError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamUnavailableError",
    "unknown_job",
]
