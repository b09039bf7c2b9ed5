from mmaudio_mcp.cli import main

main()
