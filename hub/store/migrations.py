"""The hub's schema, as versioned SQLite migrations (``PRAGMA user_version``).

``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``; :func:`hub.store.engine.migrate`
runs each once, in order, atomically with its version bump. Append new migrations, never edit
one that has shipped. These scripts are SQLite's dialect: a PostgreSQL engine carries its own
list with the same numbering, tables and columns (see :mod:`hub.store.engine`).

Tables by owner: tokens, api_keys (:mod:`hub.store.tokens`); spokes (:mod:`hub.store.spokes`);
boxes (:mod:`hub.store.boxes`); audit (:mod:`hub.store.audit`); workstreams, ws_events,
ws_inbox, approvals, usage (:mod:`hub.workstreams.store`); mcp_jobs, mcp_job_output
(:mod:`hub.mcp.jobs`); runs (:mod:`hub.store.runs`); history (:mod:`hub.store.history`).
Pinned by tests/hub/test_store.py::test_migrations_run_once_in_order.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: enrollment, keys, spokes, boxes, audit log
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, revoked_at REAL);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL, revoked_at REAL, last_used REAL);
    CREATE TABLE spokes (
        name TEXT PRIMARY KEY, public_key TEXT NOT NULL, enrolled_at REAL NOT NULL,
        last_seen REAL, revoked_at REAL, labels TEXT NOT NULL DEFAULT '[]',
        version TEXT NOT NULL DEFAULT '', connected INTEGER NOT NULL DEFAULT 0,
        disconnect_reason TEXT NOT NULL DEFAULT '');
    CREATE TABLE boxes (
        id TEXT PRIMARY KEY, spoke TEXT NOT NULL, image TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, created_at REAL NOT NULL, destroyed_at REAL);
    CREATE INDEX boxes_spoke ON boxes(spoke, state);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
    """,
    # 2: agent workstreams, their append-only event log, approvals, queued input, usage
    """
    CREATE TABLE workstreams (
        id TEXT PRIMARY KEY, spoke TEXT, want_spoke TEXT, want_label TEXT, model TEXT,
        image TEXT, auto_approve INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, error TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL DEFAULT '', last_seq INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        owner TEXT NOT NULL DEFAULT '', spoke_seq INTEGER NOT NULL DEFAULT 0,
        box_id TEXT NOT NULL DEFAULT '');
    CREATE INDEX workstreams_state ON workstreams(state, created_at);
    CREATE TABLE ws_events (
        ws_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (ws_id, seq));
    CREATE TABLE ws_inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ws_id TEXT NOT NULL, message TEXT NOT NULL,
        created_at REAL NOT NULL, delivered_at REAL);
    CREATE INDEX ws_inbox_pending ON ws_inbox(ws_id, delivered_at);
    CREATE TABLE approvals (
        ws_id TEXT NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
        state TEXT NOT NULL, created_at REAL NOT NULL, decided_at REAL, reason TEXT NOT NULL DEFAULT '',
        delivered INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ws_id, call_id));
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, ws_id TEXT NOT NULL,
        spoke TEXT NOT NULL, model TEXT NOT NULL, input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL);
    """,
    # 3: MCP jobs (long execs started by chatbots), scoped to the API key that made them, and
    # their output in order; readable by cursor (seq) after the job ends or the hub restarts.
    """
    CREATE TABLE mcp_jobs (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, box_id TEXT NOT NULL, cmd TEXT NOT NULL,
        state TEXT NOT NULL, exit_code INTEGER, error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL, finished_at REAL, last_seq INTEGER NOT NULL DEFAULT 0,
        out_chars INTEGER NOT NULL DEFAULT 0, truncated INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX mcp_jobs_owner ON mcp_jobs(owner, created_at);
    CREATE TABLE mcp_job_output (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, stream TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (job_id, seq));
    """,
    # 4: why a workstream waits (shown to users), and whether its spoke lost its agent (it is
    # then resumed from the transcript with the next message).
    """
    ALTER TABLE workstreams ADD COLUMN waiting TEXT NOT NULL DEFAULT '';
    ALTER TABLE workstreams ADD COLUMN detached INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX ws_inbox_undelivered ON ws_inbox(delivered_at, ws_id);
    """,
    # 5: people at the hub's web pages: users (bcrypt password hashes), server-side sessions
    # (only the SHA-256 of the cookie is stored), roles for users and API keys, and who acted
    # for every audit row.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
        created_at REAL NOT NULL, password_set_at REAL NOT NULL, disabled_at REAL);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, last_seen REAL NOT NULL,
        ended_at REAL, remote TEXT NOT NULL DEFAULT '');
    CREATE INDEX sessions_user ON sessions(user);
    ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE audit ADD COLUMN actor TEXT NOT NULL DEFAULT '';
    """,
    # 6: the hub's metrics history, sampled at a fixed interval and kept for a retention:
    # one row per (series, time), so a range read is one indexed scan.
    """
    CREATE TABLE history (
        series TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (series, ts));
    CREATE INDEX history_ts ON history(ts);
    """,
    # 7: fleet views. A run is one attempt of a workstream on a spoke (its lease: a workstream
    # resumed elsewhere after a loss has two); exec jobs are runs too but keep their own table
    # (mcp_jobs). Workstreams name their current run. Spokes keep how they were last seen
    # (connected, lost without a goodbye, left cleanly, revoked), so the state of a spoke that
    # is not connected survives a hub restart.
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'workstream', ws_id TEXT NOT NULL,
        spoke TEXT NOT NULL, box_id TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL,
        state TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
        outcome TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '');
    CREATE INDEX runs_ws ON runs(ws_id, started_at);
    CREATE INDEX runs_state ON runs(state, spoke);
    ALTER TABLE workstreams ADD COLUMN run_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE spokes ADD COLUMN state TEXT NOT NULL DEFAULT 'lost';
    UPDATE spokes SET state = CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                                   WHEN connected = 1 THEN 'connected' ELSE 'lost' END;
    """,
    # 8: the audit log says which spoke an action ran on and what came of it (hub/audit.py).
    """
    ALTER TABLE audit ADD COLUMN spoke TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN result TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_spoke ON audit(spoke, id);
    """,
    # 9: work that survives a lost spoke (hub/workstreams/moves.py): what to do when a
    # workstream's spoke is lost (resume elsewhere, or mark it interrupted), and whether a turn
    # it cut short is still to be continued.
    """
    ALTER TABLE workstreams ADD COLUMN on_loss TEXT NOT NULL DEFAULT 'resume';
    ALTER TABLE workstreams ADD COLUMN resume_turn INTEGER NOT NULL DEFAULT 0;
    """,
    # 10: multi-use join tokens (hub token create --name PREFIX --uses N): ``prefix`` marks a
    # token for up to ``uses`` spokes named PREFIX-…; ``uses_left`` is taken atomically, one per
    # enrollment (hub/store/tokens.py). Single-use tokens are uses = 1, prefix = 0, as before.
    """
    ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tokens ADD COLUMN uses_left INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tokens ADD COLUMN prefix INTEGER NOT NULL DEFAULT 0;
    UPDATE tokens SET uses_left = 0 WHERE used_at IS NOT NULL;
    """,
    # 11: the janitor (hub/janitor.py). A box's last activity (exec, file transfer), so one
    # idle past ``--box-idle-ttl`` is reaped; when a closed workstream's event log was pruned
    # (``--closed-ws-retention``), so it is not looked at again. Rows from before: a box's
    # activity counts from its creation.
    """
    ALTER TABLE boxes ADD COLUMN last_active_at REAL;
    UPDATE boxes SET last_active_at = created_at;
    ALTER TABLE workstreams ADD COLUMN events_pruned_at REAL;
    CREATE INDEX workstreams_unpruned ON workstreams(state, updated_at)
        WHERE events_pruned_at IS NULL;
    """,
    # 12: several hubs on one database (hub/store/cluster.py): the hubs running, which one
    # holds each spoke's link (alive while its hub's row is), named leases (the leader's),
    # the cluster's shared secrets.
    """
    CREATE TABLE hub_nodes (
        id TEXT PRIMARY KEY, url TEXT NOT NULL, started_at REAL NOT NULL,
        seen_at REAL NOT NULL, version TEXT NOT NULL DEFAULT '');
    CREATE TABLE spoke_holders (
        spoke TEXT PRIMARY KEY, hub_id TEXT NOT NULL, since REAL NOT NULL,
        labels TEXT NOT NULL DEFAULT '[]', models TEXT NOT NULL DEFAULT '[]',
        max_workstreams INTEGER NOT NULL DEFAULT 0, leaving INTEGER NOT NULL DEFAULT 0,
        relay_token_hash TEXT NOT NULL DEFAULT '');
    CREATE INDEX spoke_holders_hub ON spoke_holders(hub_id);
    CREATE INDEX spoke_holders_relay ON spoke_holders(relay_token_hash);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);
    CREATE TABLE cluster_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 13: which hub of a cluster holds each MCP session (hub/mcp/sessions.py): a request for
    # a session another hub holds is forwarded there.
    """
    CREATE TABLE mcp_sessions (
        id TEXT PRIMARY KEY, hub_id TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE INDEX mcp_sessions_hub ON mcp_sessions(hub_id);
    """,
]
