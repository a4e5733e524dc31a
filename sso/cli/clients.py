"""``sso clients``: register, inspect, change and remove OIDC clients (relying parties).

Every change is audited. A client secret is printed once, at creation or rotation,
and is never retrievable afterwards: only its hash is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext

from sso.cli.common import actor, emit, json_option
from sso.cli.output import table, when
from sso.crypto import SIGNING_ALGS
from sso.oidc.client_file import ClientChange, export_entry, export_yaml
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.clients import Client, ClientError
from sso.registry import registry

SECRET_WARNING = ("Store the client secret now: it is shown only once and cannot be "
                  "recovered (`sso clients rotate-secret ID` makes a new one).")


def client_registry() -> ClientRegistry:
    return registry().clients


def _client_or_exit(client_id: str) -> Client:
    client = client_registry().get(client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}: `sso clients list` shows them")
    return client


def _show(client: Client) -> None:
    data = client.to_dict()
    kind = "public (PKCE, no secret)" if client.public else "confidential"
    click.echo(f"{client.name}  ({client.client_id}, {kind})")
    for name in ("redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes",
                 "required_roles", "roles", "audiences"):
        click.echo(f"  {name + ':':27} {', '.join(data[name]) or '-'}")
    for name in ("trusted", "require_pkce", "home_url", "id_token_alg", "access_token_ttl",
                 "refresh_idle_ttl", "refresh_absolute_ttl", "backchannel_logout_uri",
                 "backchannel_logout_session_required", "created_at"):
        value = data[name]
        if name == "created_at" and value is not None:
            value = f"{when(value)} UTC"
        click.echo(f"  {name + ':':27} {'-' if value is None else value}")


def _shared_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options ``create`` and ``update`` share; on update, a given list replaces the old one."""
    options = [
        click.option("--redirect-uri", "redirect_uris", multiple=True,
                     help="Exact redirect URI (https://, or http:// on loopback). Repeatable."),
        click.option("--post-logout-redirect-uri", "post_logout_redirect_uris", multiple=True,
                     help="Where RP-initiated logout may return. Repeatable."),
        click.option("--grant-type", "grant_types", multiple=True,
                     help="authorization_code, refresh_token, client_credentials or "
                          "urn:ietf:params:oauth:grant-type:device_code. Repeatable."),
        click.option("--scope", "scopes", multiple=True, help="Allowed scope. Repeatable."),
        click.option("--require-role", "required_roles", multiple=True,
                     help="People need one of these roles to use the app. Repeatable."),
        click.option("--role", "roles", multiple=True,
                     help="The client's own roles (client credentials). Repeatable."),
        click.option("--audience", "audiences", multiple=True,
                     help="Resource (RFC 8707) the client may request tokens for. Repeatable."),
        click.option("--home-url", help="Where the portal links to."),
        click.option("--id-token-alg", type=click.Choice(SIGNING_ALGS)),
        click.option("--access-token-ttl", type=int, help="Seconds (60-3600)."),
        click.option("--refresh-idle-ttl", type=int, help="Seconds."),
        click.option("--refresh-absolute-ttl", type=int, help="Seconds."),
        click.option("--backchannel-logout-uri",
                     help="Where Keycard POSTs a logout token when a session of this app's "
                          "user ends (OIDC Back-Channel Logout); \"\" removes it."),
        click.option("--backchannel-logout-session-required/"
                     "--no-backchannel-logout-session-required", default=None,
                     help="The app needs the session id (sid) in logout tokens."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _fields(given: dict[str, Any]) -> dict[str, Any]:
    """Only what was given on the command line, lists as lists."""
    fields: dict[str, Any] = {}
    for name, value in given.items():
        if isinstance(value, tuple):
            if value:
                fields[name] = list(value)
        elif value is not None:
            fields[name] = value
    return fields


@click.group("clients", help="Register and manage OIDC clients (the apps that sign in here).")
def clients_group() -> None:
    pass


@clients_group.command("create", help="Register a client; prints its id and secret once.")
@click.option("--name", help="Shown to people on consent and in the portal.")
@click.option("--public", is_flag=True, help="No secret (SPA, native or CLI app); PKCE forced.")
@click.option("--device", is_flag=True,
              help="The default client of `sso login`: public, device grant and refresh "
                   "tokens, name \"Keycard CLI\" unless --name.")
@click.option("--trusted", is_flag=True, help="First-party app: no consent screen.")
@click.option("--require-pkce", is_flag=True, help="Require PKCE of a confidential client too.")
@_shared_options
@json_option
@with_appcontext
def clients_create(name: str | None, public: bool, device: bool, trusted: bool,
                   require_pkce: bool, as_json: bool, **options: Any) -> None:
    fields = _fields(options)
    if device:
        client, secret = _create_device_client(name, trusted, fields), None
        registry().admin.record_created(client, actor=actor())
    elif not name:
        raise click.UsageError("give the app's name: --name NAME")
    else:
        try:
            client, secret = registry().admin.create_app(
                {"name": name, "public": public, "trusted": trusted,
                 "require_pkce": require_pkce, **fields}, actor=actor())
        except ClientError as exc:
            raise click.ClickException(str(exc)) from exc
    data: dict[str, Any] = {"client_id": client.client_id, "client_secret": secret,
                            "client": client.to_dict()}
    if secret is not None:
        data["warning"] = SECRET_WARNING

    def text() -> None:
        click.echo(f"Created client {client.name!r}")
        click.echo(f"  client_id:     {client.client_id}")
        if secret is None:
            click.echo("  client_secret: none (public client: PKCE is required)")
        else:
            click.echo(f"  client_secret: {secret}")
            click.echo(SECRET_WARNING)
        if device:
            click.echo("It is the default client of `sso login`: people need only the issuer "
                       "(SSO_ISSUER, or issuer in ~/.config/keycard/config.toml).")

    emit(data, as_json, text)


def _create_device_client(name: str | None, trusted: bool, fields: dict[str, Any]) -> Client:
    registered = client_registry()
    current = registered.default_device_client()
    if current is not None:
        raise click.ClickException(
            f"the default device client is already {current.client_id} ({current.name!r}): "
            f"change it with `sso clients update {current.client_id}`, or delete it first")
    try:
        return registered.create_default_device_client(
            trusted=trusted, **({"name": name} if name else {}), **fields)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc


@clients_group.command("list", help="Every registered client.")
@json_option
@with_appcontext
def clients_list(as_json: bool) -> None:
    clients = client_registry().list()

    def text() -> None:
        if not clients:
            click.echo("No clients yet: `sso clients create --name NAME --redirect-uri URI`.")
            return
        table(["CLIENT ID", "NAME", "TYPE", "CREATED (UTC)", "GRANTS"],
              [[c.client_id, c.name, "public" if c.public else "confidential",
                when(c.created_at), " ".join(c.grant_types)] for c in clients])

    emit([c.to_dict() for c in clients], as_json, text)


@clients_group.command("show", help="One client's settings (never its secret).")
@click.argument("client_id")
@json_option
@with_appcontext
def clients_show(client_id: str, as_json: bool) -> None:
    client = _client_or_exit(client_id)
    emit(client.to_dict(), as_json, lambda: _show(client))


@clients_group.command("update", help="Change a client; given lists replace the old ones.")
@click.argument("client_id")
@click.option("--name")
@click.option("--trusted/--not-trusted", default=None, help="First-party: no consent screen.")
@click.option("--require-pkce/--no-require-pkce", default=None,
              help="Public clients always require PKCE.")
@click.option("--add-redirect-uri", multiple=True, help="Add one redirect URI. Repeatable.")
@click.option("--remove-redirect-uri", multiple=True, help="Remove one. Repeatable.")
@click.option("--any-employee", is_flag=True, help="Clear the required roles.")
@click.option("--no-home-url", is_flag=True, help="Clear the home URL.")
@_shared_options
@json_option
@with_appcontext
def clients_update(client_id: str, add_redirect_uri: tuple[str, ...],
                   remove_redirect_uri: tuple[str, ...], any_employee: bool, no_home_url: bool,
                   as_json: bool, **options: Any) -> None:
    before = _client_or_exit(client_id)
    changes = _fields(options)
    if add_redirect_uri or remove_redirect_uri:
        if "redirect_uris" in changes:
            raise click.UsageError("use --redirect-uri or --add/--remove-redirect-uri, not both")
        missing = [u for u in remove_redirect_uri if u not in before.redirect_uris]
        if missing:
            raise click.ClickException(f"{missing[0]!r} is not a redirect URI of this client")
        uris = [u for u in before.redirect_uris if u not in remove_redirect_uri]
        changes["redirect_uris"] = uris + [u for u in add_redirect_uri if u not in uris]
    if any_employee:
        changes["required_roles"] = []
    if no_home_url:
        changes["home_url"] = None
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    try:
        client = registry().admin.update_app(client_id, changes, actor=actor())
    except ClientError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from exc
    emit(client.to_dict(), as_json, lambda: _show(client))


@clients_group.command("delete", help="Remove a client: it can no longer sign anyone in.")
@click.argument("client_id")
@json_option
@with_appcontext
def clients_delete(client_id: str, as_json: bool) -> None:
    _client_or_exit(client_id)
    client = registry().admin.delete_app(client_id, actor=actor())
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    emit({"deleted": client_id, "name": client.name}, as_json,
         lambda: click.echo(f"Deleted client {client.name!r} ({client_id})."))


@clients_group.command("rotate-secret", help="Issue a new secret; the old one stops working.")
@click.argument("client_id")
@click.option("--revoke-tokens", is_flag=True,
              help="Also end every token issued to the client so far (a leaked secret): "
                   "access tokens are refused within seconds, grants and refresh tokens end.")
@json_option
@with_appcontext
def clients_rotate_secret(client_id: str, revoke_tokens: bool, as_json: bool) -> None:
    try:
        secret = registry().admin.rotate_app_secret(client_id, actor=actor(),
                                                    revoke_tokens=revoke_tokens)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc

    def text() -> None:
        click.echo(f"New secret for {client_id}: {secret}")
        click.echo(SECRET_WARNING)

    emit({"client_id": client_id, "client_secret": secret, "warning": SECRET_WARNING},
         as_json, text)


@clients_group.command("export",
                       short_help="Print every client as YAML (no secrets).",
                       help="Print every client as YAML (for `sso clients import`); "
                       "never a secret.")
@json_option
@with_appcontext
def clients_export(as_json: bool) -> None:
    clients = registry().admin.list_apps()
    emit({"clients": [export_entry(c) for c in clients]}, as_json,
         lambda: click.echo(export_yaml(clients), nl=False))


def _changed(change: ClientChange) -> str:
    before, after = change.before.to_dict() if change.before else {}, change.after.to_dict()
    return "; ".join(f"{name}: {_value(before.get(name))} → {_value(after[name])}"
                     for name in change.fields)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return "-" if value is None else str(value)


@clients_group.command("import",
                       short_help="Create and update clients from a YAML file.",
                       help="Create and update clients from FILE (YAML, as `sso "
                       "clients export` writes), all or nothing.")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@json_option
@with_appcontext
def clients_import(path: Path, dry_run: bool, as_json: bool) -> None:
    """Entries whose client_id exists are updated with the fields they give; others are new
    clients (with that client_id when given). Clients the file omits are left alone."""
    admin = registry().admin
    try:
        text = path.read_text()
        if dry_run:
            plan, secrets = admin.plan_app_import(text), dict[str, str]()
        else:
            plan, secrets = admin.import_apps(text, actor=actor(), source=str(path))
    except ClientError as exc:
        raise click.ClickException(f"{path}: {exc}; nothing was changed") from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 text; nothing was changed") from exc
    data = {
        "dry_run": dry_run,
        "created": [{"client_id": c.after.client_id if not dry_run else None,
                     "name": c.after.name, "client_secret": secrets.get(c.after.client_id)}
                    for c in plan.created],
        "updated": [{"client_id": c.after.client_id, "name": c.after.name,
                     "changes": {k: {"before": c.before.to_dict()[k] if c.before else None,
                                     "after": c.after.to_dict()[k]} for k in c.fields}}
                    for c in plan.updated],
        "unchanged": [c.after.client_id for c in plan.unchanged],
    }
    if secrets:
        data["warning"] = SECRET_WARNING

    def text_out() -> None:
        for change in plan.created:
            client = change.after
            if dry_run:
                click.echo(f"+ {client.name}: new {'public' if client.public else 'confidential'}"
                           " client")
                continue
            click.echo(f"+ {client.name}: created, client_id {client.client_id}")
            secret = secrets.get(client.client_id)
            if secret is not None:
                click.echo(f"  client_secret: {secret}")
        for change in plan.updated:
            click.echo(f"~ {change.after.name} ({change.after.client_id}): {_changed(change)}")
        verb = "Would change" if dry_run else "Changed"
        click.echo("No change." if plan.empty else
                   f"{verb}: {len(plan.created)} created, {len(plan.updated)} updated, "
                   f"{len(plan.unchanged)} unchanged.")
        if secrets:
            click.echo(SECRET_WARNING)

    emit(data, as_json, text_out)
