"""What the assistant can do on a call besides talking: hang up, transfer, keypad keys, HTTP
tools it runs through the bridge, and MCP servers the Realtime service calls itself."""
