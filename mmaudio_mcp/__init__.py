"""MCP server for Sony AI's MMAudio v2 text-to-audio model, served by the Pixazo gateway."""

__version__ = "0.1.0"
