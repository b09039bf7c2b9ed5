"""The interoperability scenario, driven by FastMCP's client (run in its own virtualenv, not ours).

    python fastmcp_scenario.py <auto|legacy> stdio <command> [args...]
    python fastmcp_scenario.py <auto|legacy> http|sse <url>          (bearer token from MCP_TOKEN)

Prints one JSON object: what the client saw. The test asserts on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import SSETransport, StdioTransport, StreamableHttpTransport

LONG = {"prompt": "thunderstorm over a harbour, heavy rain", "duration": 30, "wait_seconds": 120}


def transport_for(kind: str, target: list[str]) -> Any:
    token = os.environ.get("MCP_TOKEN")
    if kind == "stdio":
        return StdioTransport(command=target[0], args=target[1:], env=dict(os.environ), keep_alive=False)
    if kind == "http":
        return StreamableHttpTransport(target[0], auth=token)
    return SSETransport(target[0], auth=token)


async def scenario(mode: str, kind: str, target: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"client": f"fastmcp-{mode}", "transport": kind}
    async with Client(transport_for(kind, target), mode=mode, timeout=120) as client:
        report["protocol_version"] = client.protocol_version
        report["tools"] = sorted(tool.name for tool in await client.list_tools())

        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        result = await client.call_tool("generate_audio", LONG, progress_handler=on_progress)
        report["progress"] = progress
        report["job"] = result.structured_content
        loop = {"request_id": report["job"]["request_id"], "format": "ogg", "normalize": True, "loop": True}
        converted = await client.call_tool("download_audio", loop)
        report["reads"] = []
        for block in [*result.content, *converted.content]:
            if block.type != "resource_link":
                continue
            [content] = await client.read_resource(str(block.uri))
            data = base64.b64decode(getattr(content, "blob", ""))
            report["reads"].append(
                {
                    "uri": str(block.uri),
                    "link_mime": block.mime_type,
                    "link_size": block.size,
                    "mime": content.mime_type,
                    "bytes": len(data),
                }
            )

        report["prompts"] = {}
        for name, arguments in (("sound_effect", {"subject": "a door creaks"}), ("ambience", {"place": "a harbour"})):
            rendered = await client.get_prompt(name, arguments)
            report["prompts"][name] = len(rendered.messages)

        started = asyncio.Event()

        async def on_started(value: float, total: float | None, message: str | None) -> None:
            started.set()

        call = asyncio.create_task(client.call_tool("generate_audio", LONG, progress_handler=on_started))
        await asyncio.wait_for(started.wait(), 60)
        call.cancel()
        try:
            await call
            report["cancelled"] = False
        except asyncio.CancelledError:
            report["cancelled"] = True
        before = time.monotonic()
        after = await client.call_tool("check_status", {"request_id": report["job"]["request_id"]})
        report["after_cancel"] = {"status": after.structured_content["status"], "seconds": time.monotonic() - before}
    return report


def main() -> None:
    mode, kind, *target = sys.argv[1:]
    print(json.dumps(asyncio.run(scenario(mode, kind, target))))


if __name__ == "__main__":
    main()
