"""``hub mcp-stdio``: an MCP server on stdin/stdout for desktop chatbots, backed by the hub.

Desktop chat apps launch local MCP servers as subprocesses and talk to them over stdio. This
command is such a server with no tools of its own: it opens one MCP client connection to the
hub's streamable-HTTP endpoint (``/mcp``) and re-exposes the hub's tool list, forwarding every
call (and the hub's progress notifications back) — so the tools, their checks and the durable
jobs all stay at the hub, and a chatbot on a laptop drives the whole cluster.

Trust works as for spokes: given a pin (``sha256:`` + hex of the hub certificate's DER), the
bridge fetches the certificate the hub presents, refuses to continue unless it matches the pin,
and then trusts exactly that certificate for every request (a self-signed hub is safe; host
names are not checked because the pin is the identity). Without a pin, normal CA verification
applies. Heavy imports (mcp, httpx2) happen only when the command runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from cli.common import data_dir_option, fail

if TYPE_CHECKING:
    import ssl

    from mcp import Client


class BridgeError(Exception):
    """A reason the bridge cannot start, worded for the person configuring the chatbot."""


@dataclass(frozen=True)
class Target:
    endpoint: str  # https://host:port/mcp
    api_key: str
    pin: str | None


def resolve_target(data_dir: Path, url: str | None, api_key: str | None, pin: str | None) -> Target:
    """Options/env first; what ``hub serve`` wrote in its data dir (admin.json) fills the gaps."""
    from protocol.tokens import PIN_RE

    doc: dict[str, Any] = {}
    admin = data_dir / "admin.json"
    if not (url and api_key):
        try:
            doc = json.loads(admin.read_text())
        except FileNotFoundError:
            raise BridgeError(
                "no hub to connect to: give --url and --api-key (or SPOKEHUB_URL and "
                f"SPOKEHUB_API_KEY), or --data-dir of a local hub ({admin} is missing)"
            ) from None
        except (OSError, ValueError) as err:
            raise BridgeError(f"cannot read {admin}: {err}") from None
    base = (url or str(doc.get("url", ""))).rstrip("/")
    key = api_key or str(doc.get("api_key", ""))
    if not pin and doc.get("pin") and base == str(doc.get("url", "")).rstrip("/"):
        pin = str(doc["pin"])
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BridgeError(f"bad hub URL {base!r} (expected https://host:port)")
    if not key:
        raise BridgeError("no API key: give --api-key or SPOKEHUB_API_KEY")
    if pin is not None and not PIN_RE.match(pin.strip().lower()):
        raise BridgeError(f"malformed pin {pin!r} (expected sha256: and 64 hex digits)")
    endpoint = base if base.endswith("/mcp") else base + "/mcp"
    return Target(endpoint=endpoint, api_key=key, pin=pin.strip().lower() if pin else None)


async def pinned_context(host: str, port: int, pin: str) -> ssl.SSLContext:
    """An SSL context that trusts exactly the hub's certificate, once it matched ``pin``."""
    import asyncio
    import ssl

    from protocol.tokens import cert_pin, pins_match

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only to read the certificate; trust comes from the pin
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=probe, server_hostname=host), 30.0
        )
    except (OSError, TimeoutError) as err:
        raise BridgeError(f"cannot reach the hub at {host}:{port}: {err}") from None
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    if not der or not pins_match(pin, der):
        got = cert_pin(der or b"")
        raise BridgeError(
            f"the hub's certificate at {host}:{port} does not match the pin: expected "
            f"{pin[:23]}…, got {got[:23]}… (wrong --pin, or not the hub you think)"
        )
    ctx = ssl.create_default_context(cadata=der)  # this certificate and nothing else
    ctx.check_hostname = False
    return ctx


def _flatten(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err


async def connect(target: Target, stack: Any) -> Client:
    """Open the MCP client connection to the hub on ``stack`` (an AsyncExitStack)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import Implementation

    from protocol.version import VERSION

    parts = urlsplit(target.endpoint)
    verify: Any = True
    if parts.scheme == "https" and target.pin:
        verify = await pinned_context(parts.hostname or "", parts.port or 443, target.pin)
    http = await stack.enter_async_context(httpx2.AsyncClient(
        verify=verify,
        headers={"Authorization": f"Bearer {target.api_key}"},
        # exec may run 10 minutes before its result; long-polls are shorter than that.
        timeout=httpx2.Timeout(30.0, read=660.0),
    ))
    try:  # a clear word for the two usual mistakes before the MCP handshake hides them
        info = await http.get(target.endpoint.removesuffix("/mcp") + "/api/info")
    except httpx2.HTTPError as err:
        raise BridgeError(f"cannot reach the hub at {target.endpoint}: {err}") from None
    if info.status_code == 401:
        raise BridgeError("the hub refused the API key (HTTP 401): it is wrong or revoked")
    client = Client(
        streamable_http_client(target.endpoint, http_client=http),
        mode="auto",
        client_info=Implementation(name="spokehub-mcp-stdio", version=VERSION),
    )
    try:
        return await stack.enter_async_context(client)
    except Exception as err:
        raise BridgeError(f"MCP handshake with {target.endpoint} failed: {_flatten(err)}") from None


async def serve_stdio(target: Target) -> None:
    """Serve the hub's tools on stdin/stdout until the chatbot closes the pipe."""
    import contextlib

    import mcp_types as types
    from mcp.server import Server
    from mcp.server.context import ServerRequestContext
    from mcp.server.stdio import stdio_server
    from mcp.shared.exceptions import MCPError

    async with contextlib.AsyncExitStack() as stack:
        remote = await connect(target, stack)

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return await remote.list_tools(cursor=params.cursor if params else None)

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            async def relay(progress: float, total: float | None, message: str | None) -> None:
                await ctx.session.report_progress(progress, total, message)

            try:
                return await remote.call_tool(
                    params.name, dict(params.arguments or {}), progress_callback=relay
                )
            except MCPError:
                raise  # a protocol error from the hub (unknown tool, bad arguments) as it was
            except Exception as err:  # the hub is gone or broke the stream: keep the chat alive
                text = f"unavailable: the hub at {target.endpoint} did not answer: {_flatten(err)}"
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=text)], is_error=True
                )

        from protocol.version import VERSION

        server: Server[Any] = Server(
            "spokehub",
            version=VERSION,
            instructions=remote.instructions,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


@click.command("mcp-stdio")
@data_dir_option("hub", "SPOKEHUB_HUB_DIR")
@click.option("--url", envvar="SPOKEHUB_URL", help="Hub URL, e.g. https://hub.example:8443 "
              "(env SPOKEHUB_URL; default: the local hub in --data-dir).")
@click.option("--api-key", envvar="SPOKEHUB_API_KEY", help="API key (env SPOKEHUB_API_KEY).")
@click.option("--pin", envvar="SPOKEHUB_PIN", help="SHA-256 pin of the hub's certificate, "
              "sha256:… (env SPOKEHUB_PIN; shown by 'hub serve' and in join tokens).")
@click.option("--log-level", default="WARNING", show_default=True, help="Logged to stderr.")
def mcp_stdio(data_dir: Path, url: str | None, api_key: str | None, pin: str | None,
              log_level: str) -> None:
    """Serve MCP over stdio for desktop chatbots, forwarding every tool to the hub's /mcp."""
    import logging

    import anyio

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        target = resolve_target(data_dir, url, api_key, pin)
        anyio.run(serve_stdio, target)
    except BridgeError as err:
        fail(str(err), 2)
    except BaseExceptionGroup as group:
        inner = _flatten(group)
        if isinstance(inner, BridgeError):
            fail(str(inner), 2)
        raise
    except KeyboardInterrupt:
        pass
