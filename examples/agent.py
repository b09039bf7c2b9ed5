"""Generate a sound through mmaudio-mcp with the MCP Python SDK client, the way an MCP host does.

    python examples/agent.py "rain on a tin roof"

Starts `mmaudio-mcp` over stdio (`--sandbox`, fake audio, unless PIXAZO_API_KEY is set), prints progress while
the job runs, then asks download_audio for the file and prints its path on the last line.
"""

import os
import sys

try:
    import anyio
    from mcp import Client, StdioServerParameters
except ModuleNotFoundError as missing:
    sys.exit(f"agent.py needs {missing.name!r}, installed with mmaudio-mcp: run .venv/bin/python examples/agent.py")

# The SDK starts the server with only HOME, PATH and a few like them: pass our settings on explicitly.
SETTINGS = ("PIXAZO_API_KEY", "PIXAZO_GATEWAY_URL", "MMAUDIO_OUTPUT_DIR", "MMAUDIO_STATE_DIR")


async def show_progress(progress: float, total: float | None, message: str | None) -> None:
    done = f"{progress:.1f}/{total:.1f} s" if total else f"{progress:.1f} s"
    print(f"  {done}  {message or ''}", flush=True)


async def main(prompt: str) -> None:
    env = {name: os.environ[name] for name in SETTINGS if name in os.environ}
    args = ["serve"] if "PIXAZO_API_KEY" in env else ["serve", "--sandbox"]
    server = StdioServerParameters(command="mmaudio-mcp", args=args, env=env)
    async with Client(server) as client:
        print(f"Generating '{prompt}' ({' '.join(['mmaudio-mcp', *args])})")
        job = await call(client, "generate_audio", prompt=prompt, duration=4)
        while job["status"] in ("QUEUED", "PROCESSING"):  # it outlived wait_seconds: resume, never resubmit
            print(f"Still {job['status']}, waiting on request {job['request_id']}")
            job = await call(client, "check_status", request_id=job["request_id"], wait_seconds=60)
        job = await call(client, "download_audio", request_id=job["request_id"])
        print(job["file"]["path"])


async def call(client: Client, tool: str, **arguments: object) -> dict:
    """Call a tool with live progress; return its structured AudioJob, or stop with the error it reported."""
    result = await client.call_tool(tool, arguments, progress_callback=show_progress)
    if result.is_error or result.structured_content is None:
        sys.exit(f"{tool} failed: {result.content}")
    return result.structured_content


if __name__ == "__main__":
    anyio.run(main, " ".join(sys.argv[1:]) or "a wooden door creaks open slowly")
