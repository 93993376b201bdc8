"""``hub backup`` and ``hub restore`` (the work is :mod:`hub.backup`'s; this is the CLI)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import data_dir_option, fail

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")
database_option = click.option(
    "--database", envvar="SPOKEHUB_DATABASE_URL", show_envvar=True, default=None, metavar="URL",
    help="The hub's --database, when not in its hub.toml (a PostgreSQL store is refused: "
         "use pg_dump).")


def refuse_postgresql(data_dir: Path, database: str | None, verb: str) -> None:
    """Backups are copies of SQLite's hub.db: a hub whose store is PostgreSQL is backed up
    with PostgreSQL's own tools. Pinned by
    tests/test_backup.py::test_backup_and_restore_refuse_a_postgresql_hub."""
    from cli.config_file import database_for
    from hub.store.pg_url import parse_database

    try:
        chosen = parse_database(database_for(data_dir, database), data_dir)
    except ValueError as err:
        fail(f"--database: {err}", 2)
        return
    if chosen.kind == "postgresql":
        fail(f"hub {verb} copies a SQLite hub.db, and this hub's store is PostgreSQL "
             f"({chosen.shown()}): {verb} the database with pg_dump / pg_restore instead, and "
             "the data dir's tls.crt, tls.key, hub.toml and admin.json with it "
             "(docs/operator-guide.md, PostgreSQL)")


@click.command("backup")
@hub_dir
@click.argument("dest", type=click.Path(path_type=Path))
@database_option
def backup(data_dir: Path, dest: Path, database: str | None) -> None:
    """Write one file that restores this hub: a consistent copy of its database (taken while
    it runs), its TLS key and certificate (so enrolled spokes' pins still match), hub.toml and
    admin.json. DEST is a file, or a directory to put spokehub-backup-<time>.tar.gz in.

    The file holds private keys and credentials: it is written 0600; keep it as safe as the
    data dir."""
    from hub.backup import BackupError
    from hub.backup import backup as run

    refuse_postgresql(data_dir, database, "back up")
    try:
        written, manifest = run(data_dir, dest)
    except BackupError as err:
        fail(str(err))
        return
    except OSError as err:
        fail(f"cannot write {dest}: {err.strerror or err}")
        return
    size = written.stat().st_size
    click.echo(f"backup of {data_dir} written to {written} ({size / 1e6:.1f} MB; spokehub "
               f"{manifest.version}, schema {manifest.schema}; {', '.join(manifest.files)})")
    if "tls.crt" not in manifest.files:
        click.echo("note: no tls.crt in the data dir (a hub started with --tls-cert): back up "
                   "that certificate and key yourself; spokes pin it", err=True)


@click.command("restore")
@hub_dir
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace what the data dir holds (stop the hub on it first).")
@database_option
def restore(data_dir: Path, src: Path, force: bool, database: str | None) -> None:
    """Bring a `hub backup` file into a data dir, to be served by `hub serve` as the same hub.

    Refuses a data dir that is not empty (unless --force), a data dir a hub is serving, and an
    archive that is damaged or from a newer spokehub; then nothing is changed."""
    from cli.runlock import HUB_LOCK, holder
    from hub.backup import BackupError
    from hub.backup import restore as run

    refuse_postgresql(data_dir, database, "restore")
    running = holder(data_dir, HUB_LOCK)
    if running is not None:
        fail(f"a hub is running on {data_dir} (pid {running.pid}): stop it first")
    try:
        manifest = run(src, data_dir, force=force)
    except BackupError as err:
        fail(str(err))
        return
    except OSError as err:
        fail(f"cannot restore into {data_dir}: {err.strerror or err}")
        return
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest.created_at))
    click.echo(f"restored {src} (made {made} by spokehub {manifest.version}) into {data_dir}")
    click.echo(f"start it with: hub serve --data-dir {data_dir}"
               + (f"   (certificate pin {manifest.pin})" if manifest.pin else ""))
