"""The agent runner that lives on a spoke: model clients, built-in tools and the loop.

- :mod:`spoke.agent.llm` — provider-neutral LLM client interface, the OpenAI and Anthropic
  clients (official SDKs, streaming) and fallback across aliases.
- :mod:`spoke.agent.tools` — the built-in tools, run inside the workstream's box.
- :mod:`spoke.agent.loop` — one conversation: model turns, approvals, tool runs, events.

Importing this package is cheap; the SDKs load only when a client is made.
"""
