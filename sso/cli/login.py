"""``sso login`` and ``sso logout``: sign in from a terminal and keep the tokens.

Pure HTTP clients of a remote Keycard (:mod:`sso.cli.device_client`): no app, no Redis,
no secret. The issuer comes from ``--issuer``, ``SSO_ISSUER`` or ``issuer`` in
``config.toml``; the client from ``--client-id``, ``client_id`` in ``config.toml`` or the
issuer's default device client. Tokens live in ``tokens.json``
(:mod:`sso.cli.credentials`); ``--print-token`` hands scripts a valid access token,
refreshing it or signing in again when it has expired.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import click

from sso.cli.credentials import (
    Tokens,
    config_path,
    forget_tokens,
    load_config,
    load_tokens,
    save_tokens,
    tokens_lock,
    tokens_path,
)
from sso.cli.device_client import Issuer, LoginFailed, check_issuer
from sso.cli.output import when

DEFAULT_SCOPE = "openid profile email groups roles offline_access"


def _issuer(given: str | None, config: dict[str, str]) -> str:
    issuer = given or os.environ.get("SSO_ISSUER") or config.get("issuer")
    if not issuer:
        raise LoginFailed(f"Which Keycard? Pass --issuer URL, set SSO_ISSUER, or write "
                          f'issuer = "https://sso.example.com" in {config_path()}.')
    return check_issuer(issuer)


def _save(keycard: Issuer, client_id: str, answer: dict[str, Any],
          previous: Tokens | None = None) -> tuple[Tokens, dict[str, Any], dict[str, Any]]:
    """Verify what the token endpoint gave, save it, and return it with its claims."""
    access = str(answer.get("access_token", ""))
    access_claims = keycard.verify(access, None)
    id_claims = keycard.verify(str(answer["id_token"]), client_id) \
        if answer.get("id_token") else {}
    expires_at = int(access_claims["exp"])
    if answer.get("expires_in"):
        expires_at = min(expires_at, int(time.time()) + int(answer["expires_in"]))
    tokens = Tokens(
        issuer=keycard.url, client_id=client_id, access_token=access, expires_at=expires_at,
        # Keycard rotates refresh tokens; a server that does not keeps the old one valid.
        refresh_token=answer.get("refresh_token") or (previous.refresh_token if previous
                                                      else None),
        id_token=answer.get("id_token") or (previous.id_token if previous else None),
        scope=str(answer.get("scope") or (previous.scope if previous else "")),
        login=id_claims.get("preferred_username") or access_claims.get("preferred_username")
        or (previous.login if previous else None),
    )
    save_tokens(tokens)
    return tokens, access_claims, id_claims


def _device_login(keycard: Issuer, client_id: str, scope: str,
                  say: Callable[[str], None]) -> tuple[Tokens, dict[str, Any], dict[str, Any]]:
    grant = keycard.start(client_id, scope)
    say(f"To sign in, open {grant['verification_uri']} and enter the code: "
        f"{grant['user_code']}")
    if grant.get("verification_uri_complete"):
        say(f"Or open: {grant['verification_uri_complete']}")
    say("Waiting for approval...")
    return _save(keycard, client_id, keycard.poll(client_id, grant))


def _to_stderr(text: str) -> None:
    click.echo(text, err=True)


def _revoke_quietly(previous: Tokens | None, now: Tokens) -> None:
    """A new sign-in replaces the saved one: end the old refresh token too (best effort)."""
    if previous is None or not previous.refresh_token or previous.issuer != now.issuer \
            or previous.refresh_token == now.refresh_token:
        return
    try:
        Issuer(previous.issuer).revoke(previous.client_id, previous.refresh_token)
    except LoginFailed:
        pass


def valid_access_token(issuer: str, client_id: str | None, config: dict[str, str],
                       scope: str) -> str:
    """The saved access token while it is valid; else refreshed; else a new sign-in."""
    stored = load_tokens()
    usable = stored is not None and stored.issuer == issuer and client_id in (
        None, stored.client_id)
    if stored is not None and usable:
        if stored.fresh():
            return stored.access_token
        with tokens_lock():
            stored = load_tokens() or stored  # another process may have refreshed meanwhile
            if stored.fresh():
                return stored.access_token
            if stored.refresh_token:
                keycard = Issuer(issuer)
                answer = keycard.refresh(stored.client_id, stored.refresh_token)
                if answer is not None:
                    return _save(keycard, stored.client_id, answer, stored)[0].access_token
        _to_stderr("The saved sign-in has ended; signing in again.")
    keycard = Issuer(issuer)
    client = client_id or config.get("client_id") or keycard.default_client_id()
    tokens = _device_login(keycard, client, scope, _to_stderr)[0]
    _revoke_quietly(stored, tokens)
    return tokens.access_token


@click.command("login", help="Sign in from a terminal (device flow) and keep the tokens.")
@click.option("--issuer", help="Keycard's base URL (default: SSO_ISSUER, then issuer in "
                               "~/.config/keycard/config.toml).")
@click.option("--client-id", help="A device client (default: client_id in config.toml, then "
                                  "the issuer's default one from `sso clients create --device`).")
@click.option("--scope", default=DEFAULT_SCOPE, show_default=True,
              help="Scopes to ask for; offline_access lets the tokens be refreshed.")
@click.option("--print-token", is_flag=True,
              help="Print only a valid access token, refreshing it or signing in as needed "
                   "(instructions go to stderr): for scripts.")
@click.option("--json", "as_json", is_flag=True, help="Print the verified claims as JSON.")
def login_command(issuer: str | None, client_id: str | None, scope: str, print_token: bool,
                  as_json: bool) -> None:
    config = load_config()
    issuer_url = _issuer(issuer, config)
    if print_token:
        click.echo(valid_access_token(issuer_url, client_id, config, scope))
        return
    previous = load_tokens()
    keycard = Issuer(issuer_url)
    client = client_id or config.get("client_id") or keycard.default_client_id()
    # With --json the instructions go to stderr, so stdout stays one JSON document.
    tokens, access_claims, id_claims = _device_login(
        keycard, client, scope, _to_stderr if as_json else click.echo)
    _revoke_quietly(previous, tokens)
    if as_json:
        click.echo(json.dumps({"access_token": tokens.access_token,
                               "id_token_claims": id_claims,
                               "access_token_claims": access_claims}, indent=2, sort_keys=True))
        return
    who = tokens.login or access_claims.get("sub")
    click.echo(f"Signed in to {keycard.url} as {who}.")
    for name in ("roles", "groups"):
        values = access_claims.get(name) or id_claims.get(name) or ["-"]
        click.echo(f"  {name + ':':8} {', '.join(map(str, values))}")
    refresh = ("; refreshed automatically" if tokens.refresh_token
               else "; no refresh token (ask for offline_access)")
    click.echo(f"  access token valid until {when(tokens.expires_at)} UTC{refresh}")
    click.echo(f"Tokens saved to {tokens_path()}. `sso login --print-token` prints the access "
               "token; `sso logout` signs out.")


@click.command("logout", help="Revoke the saved sign-in at Keycard and delete its tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def logout_command(as_json: bool) -> None:
    stored = load_tokens()
    path = tokens_path()
    if stored is None:
        result: dict[str, Any] = {"signed_in": False, "revoked": False, "deleted": None}
        message = f"Not signed in: there is no {path}."
    else:
        token = stored.refresh_token or stored.access_token
        try:
            Issuer(stored.issuer).revoke(stored.client_id, token)
        except LoginFailed as exc:
            raise LoginFailed(f"{exc.message} The tokens file was kept: run `sso logout` "
                              "again when Keycard answers.") from None
        forget_tokens()
        result = {"signed_in": True, "issuer": stored.issuer, "revoked": True,
                  "deleted": str(path)}
        message = f"Signed out of {stored.issuer}: the sign-in is revoked and {path} deleted."
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(message)
