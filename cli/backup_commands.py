"""``hub backup`` and ``hub restore`` (the work is :mod:`hub.backup`'s; this is the CLI)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import data_dir_option, fail

hub_dir = data_dir_option("hub", "SPOKEHUB_HUB_DIR")


@click.command("backup")
@hub_dir
@click.argument("dest", type=click.Path(path_type=Path))
def backup(data_dir: Path, dest: Path) -> None:
    """Write one file that restores this hub: a consistent copy of its database (taken while
    it runs), its TLS key and certificate (so enrolled spokes' pins still match), hub.toml and
    admin.json. DEST is a file, or a directory to put spokehub-backup-<time>.tar.gz in.

    The file holds private keys and credentials: it is written 0600; keep it as safe as the
    data dir."""
    from hub.backup import BackupError
    from hub.backup import backup as run

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
def restore(data_dir: Path, src: Path, force: bool) -> None:
    """Bring a `hub backup` file into a data dir, to be served by `hub serve` as the same hub.

    Refuses a data dir that is not empty (unless --force), a data dir a hub is serving, and an
    archive that is damaged or from a newer spokehub; then nothing is changed."""
    from cli.runlock import HUB_LOCK, holder
    from hub.backup import BackupError
    from hub.backup import restore as run

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
