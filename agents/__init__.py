"""Doors for agents and staff tools: pool tools over MCP, the event stream socket and the
agents' API. It may import realms, pools and accounts; no app imports it."""
