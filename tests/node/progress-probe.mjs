// Call one tool the way a TypeScript-SDK host does and print each event as a JSON line:
//   node progress-probe.mjs stdio <command> [args...]   |   node progress-probe.mjs http <url>
// Environment: TOOL, TOOL_ARGS (JSON), TIMEOUT_MS (default 60000, the SDK's own default),
// RESET_ON_PROGRESS ("1" to reset the timeout on each progress notification; hosts differ).
// Exit code: 0 result received, 1 tool error or no progress, 2 request failed (e.g. timed out).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [mode, target, ...rest] = process.argv.slice(2);
const transport =
  mode === "http"
    ? new StreamableHTTPClientTransport(new URL(target))
    : new StdioClientTransport({ command: target, args: rest, env: process.env, stderr: "ignore" });
const client = new Client({ name: "progress-probe", version: "0.0.1" });
await client.connect(transport);
console.log(JSON.stringify({ event: "connected", server: client.getServerVersion() }));

const started = Date.now();
let progressEvents = 0;
let code = 0;
try {
  const result = await client.request(
    { method: "tools/call", params: { name: process.env.TOOL ?? "generate_audio", arguments: JSON.parse(process.env.TOOL_ARGS ?? "{}") } },
    CallToolResultSchema,
    {
      timeout: Number(process.env.TIMEOUT_MS ?? 60000),
      resetTimeoutOnProgress: process.env.RESET_ON_PROGRESS === "1",
      onprogress: (progress) => {
        progressEvents++;
        console.log(JSON.stringify({ event: "progress", t_ms: Date.now() - started, ...progress }));
      },
    },
  );
  console.log(JSON.stringify({ event: "result", t_ms: Date.now() - started, isError: !!result.isError, structuredContent: result.structuredContent }));
  if (result.isError || progressEvents === 0) code = 1;
} catch (error) {
  console.log(JSON.stringify({ event: "error", t_ms: Date.now() - started, code: error.code, message: error.message }));
  code = 2;
}
await client.close();
process.exit(code);
