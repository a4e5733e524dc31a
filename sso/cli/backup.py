"""``sso backup FILE`` and ``sso restore FILE``: durable configuration as one sealed file."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import with_appcontext

from sso.backup import BackupError, Backups, label, read_file, write_file
from sso.cli.common import actor, emit, json_option
from sso.registry import registry
from sso.storage import StorageUnavailable


def _backups() -> Backups:
    services = registry()
    return Backups(services.store, services.settings.secret_key)


def _table(counts: dict[str, dict[str, int]]) -> None:
    for kind, row in counts.items():
        entries = f" ({row['entries']} entries)" if row["entries"] != row["records"] else ""
        click.echo(f"  {label(kind):22} {row['records']:6} record(s){entries}")


@click.command("backup", short_help="Write Keycard's configuration to one sealed file.",
               help="Write clients, role rules, signing keys, bootstrap-admin pins "
                              "and people to FILE (0600), sealed with SSO_SECRET_KEY.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@with_appcontext
def backup_command(file: Path, as_json: bool) -> None:
    try:
        text, contents = _backups().create()
        write_file(file, text)
        registry().audit.record("backup.created", actor=actor(),
                                counts=contents.header["counts"])
    except (BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    except StorageUnavailable as exc:
        raise click.ClickException(f"Redis is unavailable, nothing written: {exc}") from exc
    counts = contents.header["counts"]

    def text_out() -> None:
        click.echo(f"Backed up to {file} (sealed with SSO_SECRET_KEY: keep that key, the "
                   "file is useless without it):")
        _table(counts)

    emit({"file": str(file), "header": contents.header}, as_json, text_out)


@click.command("restore", help="Restore a file made by `sso backup` (same SSO_SECRET_KEY). "
                               "Refuses a Redis that already holds configuration unless --force.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Delete the clients, rules, keys, pins and people already there, then restore.")
@json_option
@with_appcontext
def restore_command(file: Path, force: bool, as_json: bool) -> None:
    backups = _backups()
    try:
        contents = backups.open(read_file(file))
        replaced = backups.present()
        restored = backups.restore(contents, force=force)
        registry().audit.record("backup.restored", actor=actor(), counts=restored,
                                replaced=replaced, made=contents.header["created_at"])
    except BackupError as exc:
        raise click.ClickException(f"{exc}. Nothing was written.") from exc
    except StorageUnavailable as exc:
        raise click.ClickException(f"Redis is unavailable: {exc}") from exc
    header = contents.header

    def text_out() -> None:
        click.echo(f"Restored {file} (made {header['created_at']} by Keycard "
                   f"{header['keycard_version']}):")
        _table(restored)
        if replaced:
            click.echo("Replaced what was there: " + ", ".join(
                f"{label(kind)} {n}" for kind, n in replaced.items()))
        click.echo("Running instances reload clients and signing keys within seconds; "
                   "sessions and tokens made before the restore are not in a backup.")

    emit({"file": str(file), "header": header, "restored": restored, "replaced": replaced},
         as_json, text_out)
