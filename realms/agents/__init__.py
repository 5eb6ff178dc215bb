"""Doors for agents and staff tools: pool tools over MCP, the event stream socket and the
agents' API. Part of realms: it may import pools and accounts, and no other module of realms imports it."""
