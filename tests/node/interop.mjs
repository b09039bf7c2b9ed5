// The interoperability scenario, driven by the TypeScript SDK client (what Claude Desktop, VS Code and Cursor
// build on). Prints one JSON object: what the client saw; tests/test_interop.py asserts on it.
//   node interop.mjs stdio <command> [args...]   |   node interop.mjs http|sse <url>   (bearer token: MCP_TOKEN)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [kind, target, ...rest] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
const auth = token ? { Authorization: `Bearer ${token}` } : {};
// One fetch for every request the transport makes (the SSE stream included), carrying the bearer token.
const withAuth = (url, init = {}) => {
  const headers = new Headers(init.headers);
  for (const [name, value] of Object.entries(auth)) headers.set(name, value);
  return fetch(url, { ...init, headers });
};
const transport =
  kind === "http"
    ? new StreamableHTTPClientTransport(new URL(target), { fetch: withAuth })
    : kind === "sse"
      ? new SSEClientTransport(new URL(target), { fetch: withAuth })
      : new StdioClientTransport({ command: target, args: rest, env: process.env, stderr: "ignore" });
let negotiated;
const setVersion = transport.setProtocolVersion?.bind(transport);
transport.setProtocolVersion = (version) => {
  negotiated = version;
  setVersion?.(version);
};

const LONG = { prompt: "thunderstorm over a harbour, heavy rain", duration: 30, wait_seconds: 120 };
const report = { client: "typescript-sdk", transport: kind };
const client = new Client({ name: "interop", version: "1.0.0" });
await client.connect(transport);
report.protocol_version = negotiated ?? null;
report.tools = (await client.listTools()).tools.map((tool) => tool.name).sort();

const progress = [];
const result = await client.request(
  { method: "tools/call", params: { name: "generate_audio", arguments: LONG } },
  CallToolResultSchema,
  { timeout: 120000, resetTimeoutOnProgress: true, onprogress: (p) => progress.push(p.progress) },
);
report.progress = progress;
report.job = result.structuredContent;
const loop = { request_id: report.job.request_id, format: "ogg", normalize: true, loop: true };
const converted = await client.callTool({ name: "download_audio", arguments: loop });
report.reads = [];
for (const block of [...result.content, ...converted.content].filter((b) => b.type === "resource_link")) {
  const read = await client.readResource({ uri: block.uri });
  const [content] = read.contents;
  report.reads.push({
    uri: block.uri,
    link_mime: block.mimeType,
    link_size: block.size,
    mime: content.mimeType,
    bytes: Buffer.from(content.blob ?? "", "base64").length,
  });
}

report.prompts = {};
for (const [name, args] of [["sound_effect", { subject: "a door creaks" }], ["ambience", { place: "a harbour" }]]) {
  report.prompts[name] = (await client.getPrompt({ name, arguments: args })).messages.length;
}

// Cancel a call once it is under way; the SDK sends notifications/cancelled. The server must answer right after.
const controller = new AbortController();
const cancelled = client
  .request({ method: "tools/call", params: { name: "generate_audio", arguments: LONG } }, CallToolResultSchema, {
    signal: controller.signal,
    timeout: 120000,
    onprogress: () => controller.abort("the user pressed stop"),
  })
  .then(() => false, () => true);
report.cancelled = await cancelled;
const before = Date.now();
const after = await client.callTool({ name: "check_status", arguments: { request_id: report.job.request_id } });
report.after_cancel = { status: after.structuredContent?.status, seconds: (Date.now() - before) / 1000 };

await client.close();
console.log(JSON.stringify(report));
process.exit(0);
