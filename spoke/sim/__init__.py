"""``spoke sim``: many simulated spokes in one process against a real hub.

Each simulated spoke is a real spoke session (spoke/connector.py's dial, TLS pin check and
backoff; spoke/session.py; spoke/dispatcher.py's allowlist and policy) over simulated boxes and
agent replies, so the hub cannot tell it from a real spoke without Docker or an LLM. Modules:

- :mod:`spoke.sim.boxes`: the in-memory box manager, with latency.
- :mod:`spoke.sim.agent`: the real workstream runner with a simulated model.
- :mod:`spoke.sim.identity`: keys derived from one seed; enrolled names kept for the next run.
- :mod:`spoke.sim.net`: source addresses and fault injection (kill, partition, slow) under the
  real connector.
- :mod:`spoke.sim.fleet`: the spokes, connection counts and outages.
- :mod:`spoke.sim.load`: load through the hub's REST API and its timings.
- :mod:`spoke.sim.scenarios`: steady, burst, crash, churn.
- :mod:`spoke.sim.report`: the command's loop, signals and printed report.

docs/operator-guide.md ("Simulating spokes") says how to use it; docs/performance.md has figures
measured with it.
"""
