// Generate a sound through mmaudio-mcp with the TypeScript MCP SDK, showing live progress, then fetch the file.
//   npm install && node agent.mjs "rain on a tin roof"
// Without PIXAZO_API_KEY it uses the built-in sandbox (fake audio, real protocol). MMAUDIO_COMMAND overrides
// the command that starts the server (default: mmaudio-mcp on PATH).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const prompt = process.argv[2] ?? "rain on a tin roof";
const [command, ...baseArgs] = (process.env.MMAUDIO_COMMAND ?? "mmaudio-mcp").split(" ");
const args = process.env.PIXAZO_API_KEY ? baseArgs : [...baseArgs, "serve", "--sandbox"];

// Hosts pass only a few variables to the server: hand it our whole environment (key and folders included).
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: "inherit" });
const client = new Client({ name: "mmaudio-agent-example", version: "1.0.0" });
await client.connect(transport);

const generated = await client.request(
  { method: "tools/call", params: { name: "generate_audio", arguments: { prompt, duration: 4 } } },
  CallToolResultSchema,
  {
    timeout: 120_000,
    resetTimeoutOnProgress: true,
    onprogress: ({ progress, total, message }) =>
      console.error(`  ${message ?? ""} (${progress.toFixed(0)}/${(total ?? 0).toFixed(0)} s)`),
  },
);
if (generated.isError) throw new Error(generated.content[0]?.text ?? "generation failed");

let job = generated.structuredContent;
while (job.status !== "COMPLETED") {
  // The job outlived the server's wait: it keeps running and is resumed by its request_id, never resubmitted.
  const checked = await client.callTool({ name: "check_status", arguments: { request_id: job.request_id, wait_seconds: 30 } });
  if (checked.isError) throw new Error(checked.content[0]?.text ?? "check_status failed");
  job = checked.structuredContent;
}
const downloaded = await client.callTool({ name: "download_audio", arguments: { request_id: job.request_id } });
console.log(downloaded.structuredContent.file.path);
await client.close();
