"""``hub migrate-store``: move a hub's store from its SQLite ``hub.db`` into PostgreSQL (the
work is :mod:`hub.store.migrate_store`'s; this is the CLI: checks, progress, one-line errors)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import data_dir_option, fail

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


@click.command("migrate-store")
@hub_dir
@click.option("--from", "source", default=None, metavar="sqlite:PATH",
              help="The SQLite database to copy (default: hub.db in the data dir).")
@click.option("--to", "target", required=True, envvar="SPOKEHUB_DATABASE_URL", show_envvar=True,
              metavar="URL", help="The PostgreSQL database: postgresql://USER:PASSWORD@HOST/DB "
              "(empty; its schema is made if missing).")
@click.option("--force", is_flag=True, help="Empty a target that already holds rows first.")
def migrate_store(data_dir: Path, source: str | None, target: str, force: bool) -> None:
    """Copy every table of a stopped hub's SQLite database into PostgreSQL, keeping ids, and
    check the row counts; then serve with `hub serve --database URL`.

    Refuses a source a hub is serving (stop it first), a target that is not PostgreSQL or
    not empty (unless --force); a failed copy leaves the target as it was. The SQLite file
    is kept (it is migrated to this version's schema first, as `hub serve` would)."""
    from cli.runlock import HUB_LOCK, holder
    from hub.store.engine import SchemaTooNew
    from hub.store.migrate_store import MigrateError
    from hub.store.migrate_store import migrate_store as run
    from hub.store.pg_url import DatabaseUnreachable, parse_database

    try:
        src = parse_database(source, data_dir)
        dst = parse_database(target, data_dir)
    except ValueError as err:
        fail(str(err), 2)
        return
    if src.kind != "sqlite" or src.path is None:
        fail("--from must be a SQLite database (sqlite:PATH), or left out for the data dir's", 2)
        return
    if dst.kind != "postgresql":
        fail("--to must be a PostgreSQL URL (postgresql://USER:PASSWORD@HOST/DB)", 2)
    for where in {src.path.parent, data_dir}:
        running = holder(where, HUB_LOCK)
        if running is not None:
            fail(f"a hub is running on {where} (pid {running.pid}): stop it first "
                 "(`hub down`), so nothing is written while the copy is made")
    click.echo(f"copying {src.path} into {dst.shown()}")

    def progress(table: str, rows: int) -> None:
        click.echo(f"  {table}: {rows} rows")

    try:
        copied = run(src.path, dst.url, force=force, report=progress)
    except (MigrateError, DatabaseUnreachable) as err:
        fail(str(err))
        return
    except SchemaTooNew as err:
        fail(f"{src.path}: {err}")
        return
    click.echo(f"done: {sum(copied.values())} rows in {len(copied)} tables, counts verified. "
               f"Serve it with: hub serve --database URL (or SPOKEHUB_DATABASE_URL, or "
               "[database] url in hub.toml)")
