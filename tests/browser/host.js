// A minimal web host for the player view, built on the official pieces: the TypeScript MCP client and the
// ext-apps AppBridge. The view runs in a sandbox proxy on another origin (localhost vs 127.0.0.1), whose CSP
// header is the spec's default. window.host exposes what the browser test checks.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { AppBridge, PostMessageTransport, getToolUiResourceUri } from "@modelcontextprotocol/ext-apps/app-bridge";

const UI = "io.modelcontextprotocol/ui";
const MIME = "text/html;profile=mcp-app";
const host = (window.host = { calls: [], reads: [], sizes: [], errors: [], ready: false });

async function main() {
  const params = new URLSearchParams(location.search);
  const client = new Client({ name: "player-test-host", version: "1.0.0" }, { capabilities: { extensions: { [UI]: { mimeTypes: [MIME] } } } });
  await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", location.href)));
  const tools = (await client.listTools()).tools;
  const tool = tools.find((t) => t.name === "generate_audio");
  const uri = getToolUiResourceUri(tool);
  const resource = (await client.readResource({ uri })).contents[0];
  if (resource.mimeType !== MIME) throw new Error("bad mime type " + resource.mimeType);

  const iframe = document.createElement("iframe");
  iframe.id = "app";
  iframe.title = "Audio player";
  const port = location.port;
  iframe.src = `http://localhost:${port}/sandbox.html`;
  document.body.appendChild(iframe);

  const hostContext = {
    theme: "dark",
    displayMode: "inline",
    styles: { variables: {  // a dark host theme, as MCP Apps hosts pass it (hostContext.styles.variables)
      "--color-background-primary": "#1e1f24", "--color-background-secondary": "#26272e",
      "--color-background-tertiary": "#31323a", "--color-text-primary": "#f2f2f2", "--color-text-secondary": "#a3a6ae",
      "--color-text-info": "#6ea8fe", "--color-border-primary": "#3b3c45", "--border-radius-md": "8px",
    } },
  };
  const bridge = new AppBridge(client, { name: "player-test-host", version: "1.0.0" },
    { serverTools: {}, serverResources: {}, logging: {} }, { hostContext });
  bridge.onsizechange = (size) => { host.sizes.push(size); if (size.height) iframe.style.height = size.height + "px"; };
  bridge.onsandboxready = () => bridge.sendSandboxResourceReady({ html: resource.text, csp: resource._meta?.ui?.csp });
  bridge.oninitialized = async () => {
    const args = JSON.parse(params.get("args") || '{"prompt":"rain on a tin roof"}');
    await bridge.sendToolInput({ arguments: args });
    const result = await client.callTool({ name: "generate_audio", arguments: args });
    host.firstResult = result;
    await bridge.sendToolResult(result);
    host.ready = true;
  };
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  // Record what the view asks for, and enforce tool visibility as hosts must (the bridge leaves that to us).
  const callTool = bridge.oncalltool, readResource = bridge.onreadresource;
  bridge.oncalltool = (params, extra) => {
    host.calls.push(params.name);
    const visibility = tools.find((t) => t.name === params.name)?._meta?.ui?.visibility ?? ["model", "app"];
    if (!visibility.includes("app")) throw new Error(`${params.name} is not callable from the view`);
    return callTool(params, extra);
  };
  bridge.onreadresource = (params, extra) => { host.reads.push(params.uri); return readResource(params, extra); };
}
main().catch((err) => { host.errors.push(String(err && err.stack || err)); });
