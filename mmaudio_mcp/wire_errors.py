"""The one place where our errors become what an MCP client sees.

- Tools: every refusal or failure is an isError tool result (a `ToolError`), so the model reads what happened and
  what to do: argument errors as sentences (`explain_validation_error`), domain errors with their own message.
- Resources: a JSON-RPC error. Not found (unknown job, bad id, no such variant or chunk) is -32002 up to
  2025-11-25 and -32602 from 2026-07-28, as each version's spec says; anything else is -32603.
- Prompts: -32602 (Invalid params) for an unknown prompt, a missing or a bad argument (every version's spec).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, NoReturn

from mcp import MCPError
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import ValidationError

from mmaudio_mcp.errors import InvalidArgumentError, MmaudioError, UnknownJobError
from mmaudio_mcp.models import explain_validation_error

if TYPE_CHECKING:
    from collections.abc import Generator

RESOURCE_NOT_FOUND: Final = -32002
"""The spec's "Resource not found" code before 2026-07-28 (which uses -32602 instead)."""
_MODERN: Final = "2026-07-28"


class NotFoundError(MmaudioError):
    """A resource URI names nothing we have (e.g. a variant that was never made, a chunk past the end)."""

    kind = "not_found"


def tool_argument_error(exc: ValidationError) -> ToolError:
    """A tool's arguments were refused: one sentence per problem."""
    return ToolError(explain_validation_error(exc))


@contextmanager
def tool_errors(what: str = "") -> Generator[None]:
    """Inside a tool: our typed errors and model refusals become the tool error the model reads.
    `what` prefixes argument errors found after the SDK's own check (e.g. "Invalid processing options")."""
    try:
        yield
    except ValidationError as exc:
        raise ToolError(f"{what}: {explain_validation_error(exc)}" if what else explain_validation_error(exc)) from exc
    except MmaudioError as exc:
        raise ToolError(exc.message) from exc


@contextmanager
def resource_errors(uri: str, protocol_version: str | None) -> Generator[None]:
    """Inside a resource read: our typed errors become the JSON-RPC error the version's spec names."""
    code = INVALID_PARAMS if (protocol_version or "") >= _MODERN else RESOURCE_NOT_FOUND
    try:
        yield
    except (UnknownJobError, InvalidArgumentError, NotFoundError) as exc:
        raise MCPError(code=code, message=exc.message, data={"uri": uri}) from exc
    except ResourceNotFoundError as exc:  # the SDK's: no resource or template matches the URI
        raise MCPError(code=code, message=str(exc), data={"uri": uri}) from exc
    except MmaudioError as exc:
        raise MCPError(code=INTERNAL_ERROR, message=exc.message, data={"uri": uri}) from exc
    except ResourceError as exc:  # the SDK's own (e.g. the server is not running yet)
        raise MCPError(code=INTERNAL_ERROR, message=str(exc), data={"uri": uri}) from exc


def prompt_error(message: str) -> NoReturn:
    """An unknown prompt or a missing argument: Invalid params."""
    raise MCPError(code=INVALID_PARAMS, message=message)


@contextmanager
def prompt_errors() -> Generator[None]:
    """Around rendering a prompt: a refused argument (the SDK wraps it in a ValueError) is Invalid params."""
    try:
        yield
    except MCPError:
        raise
    except ValueError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ValidationError):  # the SDK wraps it twice
            cause = cause.__cause__
        prompt_error(explain_validation_error(cause) if isinstance(cause, ValidationError) else str(exc))


__all__ = [
    "RESOURCE_NOT_FOUND",
    "NotFoundError",
    "prompt_error",
    "prompt_errors",
    "resource_errors",
    "tool_argument_error",
    "tool_errors",
]
