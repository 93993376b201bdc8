"""The hub image's HEALTHCHECK: does the hub in this container answer GET /healthz?

A liveness probe on loopback, so the certificate is not verified: it is the hub's own
self-signed one (spokes trust it through the pin in their join token, not through this). It
tries https first, then http for a hub started with --insecure-http behind a TLS proxy.
/healthz answers 200 even when "degraded" (no spoke, no model): the process is alive.
Exit 0 healthy, 1 not (Docker's convention)."""

import os
import ssl
import sys
import urllib.request

port = os.environ.get("SPOKEHUB_HEALTH_PORT", "8443")
unverified = ssl.create_default_context()
unverified.check_hostname = False
unverified.verify_mode = ssl.CERT_NONE
errors = []
for scheme in ("https", "http"):
    try:
        url = f"{scheme}://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=4, context=unverified) as reply:
            sys.exit(0 if reply.status == 200 else 1)
    except (OSError, ValueError) as err:
        errors.append(f"{scheme}: {err}")
print("; ".join(errors), file=sys.stderr)  # shown by `docker inspect` under State.Health
sys.exit(1)
