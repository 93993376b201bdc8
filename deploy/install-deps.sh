#!/usr/bin/env bash
# Installs what spokehub needs into a project virtualenv (.venv), idempotently.
#
#   deploy/install-deps.sh          what the hub and spoke need (`make up`)
#   deploy/install-deps.sh --test   that, plus the test tools and Chromium (`make test`)
#
# Never installs into the system interpreter: Debian's and Ubuntu's refuse it (PEP 668), and
# where it works it would change the machine's Python for every other program. PYTHON picks
# the interpreter the virtualenv is made from (default python3), VENV where it goes.
# Says what it does at each step, as plain lines (readable in a terminal and in a log).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=run
[ "${1:-}" = "--test" ] && mode=test
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
step() { printf '==> %s\n' "$*"; }

# 1. System packages (apt): only what is missing.
need=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v "$PYTHON" >/dev/null 2>&1 || need+=(python3)
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
[ "$mode" = test ] && { command -v chromium >/dev/null 2>&1 || need+=(chromium); }
# tests/test_deploy.py validates and runs deploy/compose.yaml with Debian's docker-compose.
[ "$mode" = test ] && { command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose); }
# tests/test_pty.py drives `hub box exec -it` in a real terminal: tmux.
[ "$mode" = test ] && { command -v tmux >/dev/null 2>&1 || need+=(tmux); }
# The store conformance tests (tests/pg.py) start a throwaway PostgreSQL server.
[ "$mode" = test ] && { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql); }
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
  step "installing system packages: ${need[*]} (apt-get; a minute or two)"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

# 2. The project virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtualenv $VENV (from $("$PYTHON" -c 'import sys; print(sys.executable)'))"
  "$PYTHON" -m venv "$VENV"
fi

# 3. Python packages, only when pyproject.toml changed since the last install of this kind.
extras=""
[ "$mode" = test ] && extras="[test]"
stamp="$VENV/.spokehub-installed-$mode"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  step "installing spokehub$extras and its dependencies into $VENV (pip; first time about a minute)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
    -e ".$extras" 2>&1 | grep --line-buffered -E '^(Collecting|Successfully|ERROR|error)' || true
  "$VENV/bin/python" -c 'import cli.hub_cli, hub.app, spoke.service' \
    || { echo "install-deps: the install into $VENV failed (see the pip output above)" >&2; exit 1; }
  echo "$want" > "$stamp"
  [ "$mode" = test ] && echo "$want" > "$VENV/.spokehub-installed-run"
else
  step "$VENV is up to date (pip install skipped: pyproject.toml unchanged)"
fi
exit 0
