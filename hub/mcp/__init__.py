"""The hub's MCP front-end: streamable HTTP at ``/mcp`` (``frontend``), the aiohttp→ASGI bridge
(``asgi``), the tools (``cluster_tools``, ``workstream_tools``) and durable exec jobs (``jobs``)."""
