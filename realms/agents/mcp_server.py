"""The pool tools (agents.tools) as an MCP server, with the `mcp` SDK: streamable HTTP at
/mcp in the ASGI app (`http_app`) and stdio through `manage.py mcp_stdio`.

The caller is authenticated before any tool runs (agents.callers): over HTTP by `http_app`
from the request's bearer token (a request without a valid one gets 401 and never reaches
the SDK), over stdio once, when the command starts. Tools read it with `caller_of_context`.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent

from realms.agents import tools
from realms.agents.callers import Caller, NotAuthenticated, authenticate_token, bearer_token
from rentahal.errors import error_body

CALLER_SCOPE_KEY = "rentahal.caller"
# The caller of `manage.py mcp_stdio`, authenticated when it starts.
stdio_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("rentahal_stdio_caller", default=None)

TOOLS = {
    function.__name__: function
    for function in (
        tools.pool_list, tools.pool_health, tools.pool_spawn, tools.pool_scale, tools.pool_close,
        tools.pool_execute, tools.pool_route_execute, tools.pool_search_memory,
    )
}

server = MCPServer(
    "rentahal",
    instructions=(
        "Pool tools of the rentahal AI query broker: list pools and their health, spawn, scale and close "
        "pools (staff with the pools permissions), run a query on a named pool or let rentahal route it "
        "(round_robin, least_loaded, random, affinity), and search past queries. Every result has `ok`; "
        "a refusal is data with `error.code`, `error.message` and, where waiting helps, `retry_after`."
    ),
)


def caller_of_context(ctx: Context) -> Caller:
    request = ctx.request_context.request
    caller = request.scope.get(CALLER_SCOPE_KEY) if request is not None else stdio_caller.get()
    if caller is None:
        raise NotAuthenticated("No authenticated caller.")
    return caller


async def call(ctx: Context, tool_name: str, /, **arguments) -> dict[str, Any]:
    """Run the tool on a thread (it reads and writes the database, and may wait for a query)."""
    try:
        caller = caller_of_context(ctx)
    except NotAuthenticated as exc:
        return tools.refusal(exc)
    return await sync_to_async(TOOLS[tool_name], thread_sensitive=False)(caller, **arguments)


@server.tool()
async def pool_list(ctx: Context) -> dict[str, Any]:
    """List every pool alias with its members' live state (health, cooldown, in flight, latency)."""
    return await call(ctx, "pool_list")


@server.tool()
async def pool_health(ctx: Context, pool: str = "", realm: str = "") -> dict[str, Any]:
    """Health of every pool (or one, by alias and realm): serving members, in-flight work, capacity, load."""
    return await call(ctx, "pool_health", pool=pool, realm=realm)


@server.tool()
async def pool_spawn(
    ctx: Context, name: str, query_type: str, members: list[str], strategy: str = "auto", realm: str = ""
) -> dict[str, Any]:
    """Create a pool alias (e.g. $RESEARCH) of workers of one query type, with a selection strategy."""
    return await call(ctx, "pool_spawn", name=name, query_type=query_type, members=members, strategy=strategy, realm=realm)


@server.tool()
async def pool_scale(
    ctx: Context, name: str, realm: str = "", add: list[str] | None = None, remove: list[str] | None = None
) -> dict[str, Any]:
    """Add workers to a pool or remove them, by worker name."""
    return await call(ctx, "pool_scale", name=name, realm=realm, add=add or [], remove=remove or [])


@server.tool()
async def pool_close(ctx: Context, name: str, realm: str = "") -> dict[str, Any]:
    """Close (delete) a pool alias; its workers stay registered."""
    return await call(ctx, "pool_close", name=name, realm=realm)


@server.tool()
async def pool_execute(ctx: Context, pool: str, prompt: str, realm: str = "") -> dict[str, Any]:
    """Run a query on the named pool and return its answer, cost and routing record."""
    return await call(ctx, "pool_execute", pool=pool, prompt=prompt, realm=realm)


@server.tool()
async def pool_route_execute(
    ctx: Context, prompt: str, selector: str = "least_loaded", query_type: str = "chat", affinity_key: str = "",
    pools: list[str] | None = None,
) -> dict[str, Any]:
    """Run a query on the pool a selector picks (round_robin, least_loaded, random, affinity by
    `affinity_key`), among the pools of the query type (or those named); the answer comes with
    the routing record: every candidate's load and the reason for the choice."""
    return await call(
        ctx, "pool_route_execute", prompt=prompt, selector=selector, query_type=query_type, affinity_key=affinity_key,
        pools=pools or [],
    )


@server.tool()
async def pool_search_memory(
    ctx: Context, query: str, page: int = 1, per_page: int = 20, user: str = ""
) -> dict[str, Any]:
    """Full-text search over past queries' prompts and answers, best first (staff: across users, or one `user`)."""
    return await call(ctx, "pool_search_memory", query=query, page=page, per_page=per_page, user=user)


def accepted_arguments(name: str) -> frozenset[str]:
    return frozenset(parameter for parameter in inspect.signature(TOOLS[name]).parameters if parameter != "caller")


def refused_result(error: dict) -> CallToolResult:
    """Return a tool result that carries a refusal as data (the shape every tool returns)."""
    structured = {"ok": False, "error": error}
    return CallToolResult(
        content=[TextContent(type="text", text=orjson.dumps(structured).decode())], structured_content=structured, is_error=True
    )


async def refuse_unknown_arguments(ctx, call_next):
    """Refuse a tool call naming arguments the tool does not take; the SDK would drop them silently."""
    params = ctx.params or {}
    if ctx.method == "tools/call" and params.get("name") in TOOLS:
        unknown = sorted(set(params.get("arguments") or {}) - accepted_arguments(params["name"]))
        if unknown:
            fields = {argument[:64]: ["Not an argument of this tool."] for argument in unknown}
            return refused_result({"code": "invalid", "message": f"Unknown arguments: {', '.join(fields)}.", "fields": fields})
    return await call_next(ctx)


server.middleware.append(refuse_unknown_arguments)


class HTTPDoor:
    """/mcp in the ASGI app: authenticate the bearer token, then hand the request to the SDK.

    daphne sends no ASGI lifespan events, so the SDK's session manager is started on the first
    request and runs for the life of the process. Stateless mode with JSON answers: any web
    process can serve any request, as with the rest of the broker.
    """

    def __init__(self):
        # The SDK's Host check guards servers that trust whoever reaches them. Here every
        # request needs a bearer token, which a browser never adds by itself, so a page
        # loaded under a rebound host name has nothing to call with.
        self.app = server.streamable_http_app(
            stateless_http=True, json_response=True, streamable_http_path="/mcp",
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.started: asyncio.Future | None = None

    async def ensure_started(self) -> None:
        if self.started is None:
            self.started = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self.run_session_manager())
        await asyncio.shield(self.started)

    async def run_session_manager(self) -> None:
        async with server.session_manager.run():
            self.started.set_result(None)
            await asyncio.Event().wait()

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        try:
            token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            caller = await sync_to_async(authenticate_token, thread_sensitive=False)(token)
        except NotAuthenticated as exc:
            body = orjson.dumps({"error": error_body(exc)})
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.ensure_started()
        await self.app({**scope, CALLER_SCOPE_KEY: caller}, receive, send)


http_app = HTTPDoor()
