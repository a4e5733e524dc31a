"""``sso roles``: map GitHub membership to roles, import/export the rule set, explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext

from sso.cli.common import actor, emit, json_option, profile_or_exit
from sso.cli.output import table
from sso.registry import registry
from sso.roles import Rule, explain
from sso.rules_store import (
    RuleError,
    describe,
    export_yaml,
    parse_target,
    parse_yaml,
    rule_to_dict,
)


def _target(args: tuple[str, ...], user: str | None, *,
            lookup: bool = False) -> tuple[str, str, str, tuple[str, ...]]:
    """(kind, target, label, roles) from ``ORG[/TEAM] ROLE...`` or ``--user LOGIN ROLE...``.

    With ``lookup``, a login nobody has signed in with is asked of GitHub (its numeric id),
    and the command says so."""
    if not user and not args:
        raise click.UsageError("give ORG or ORG/TEAM (or --user LOGIN)")
    if user:
        login, roles = user, args
    else:
        try:
            kind, target = parse_target(args[0])
        except RuleError as exc:
            raise click.UsageError(str(exc)) from exc
        if kind != "user":
            return kind, target, "", args[1:]
        login, roles = target, args[1:]
    if not lookup:
        profile = profile_or_exit(login)
        return "user", profile.user_id, profile.login, roles
    try:
        user_id, found, note = registry().admin.resolve_user(login)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    if note:
        click.echo(note, err=True)
    return "user", user_id, found, roles


def _record(before: list[Rule], after: list[Rule], **details: Any) -> None:
    registry().audit.record(
        "rules.changed", actor=actor(),
        before=[rule_to_dict(r) for r in before], after=[rule_to_dict(r) for r in after],
        **details,
    )


@click.group("roles", help="Map GitHub organisations, teams and people to roles.")
def roles_group() -> None:
    pass


@roles_group.command("map",
                     short_help="Grant roles to an organisation, a team or a person.",
                     help="Grant ROLE... to ORG, ORG/TEAM, @LOGIN or --user LOGIN "
                     "(a login not seen yet is looked up on GitHub).")
@click.argument("args", nargs=-1)
@click.option("--user", help="GitHub login (matched by numeric id, so renames are followed).")
@json_option
@with_appcontext
def roles_map(args: tuple[str, ...], user: str | None, as_json: bool) -> None:
    if not user and not args:
        raise click.UsageError("give ORG or ORG/TEAM (or --user LOGIN)")
    if not (args if user else args[1:]):
        raise click.UsageError("give at least one ROLE")
    kind, target, label, roles = _target(args, user, lookup=True)
    store = registry().rules
    before = store.all()
    try:
        rule = store.map(kind, target, roles, label)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    _record(before, store.all())
    applied = _apply()
    emit({**rule_to_dict(rule), "applied": applied}, as_json,
         lambda: click.echo(f"{describe(rule)} → {', '.join(rule.roles)}; "
                            f"{_applied_text(applied)}"))


@roles_group.command("unmap", short_help="Remove roles (or a whole rule) from a target.",
                     help="Remove ROLE... (or the whole rule) from a target.")
@click.argument("args", nargs=-1)
@click.option("--user", help="GitHub login.")
@json_option
@with_appcontext
def roles_unmap(args: tuple[str, ...], user: str | None, as_json: bool) -> None:
    kind, target, _, roles = _target(args, user)
    store = registry().rules
    before = store.all()
    removed = store.unmap(kind, target, roles)
    if removed is None:
        raise click.ClickException(f"no rule for {args[0] if args else '@' + str(user)}")
    _record(before, store.all())
    applied = _apply()
    emit({"removed": rule_to_dict(removed), "roles": list(roles) or list(removed.roles),
          "applied": applied},
         as_json, lambda: click.echo(f"Removed {', '.join(roles or removed.roles)} from "
                                     f"{describe(removed)}; {_applied_text(applied)}"))


def _apply() -> int:
    """Rule changes take effect at once: the roles of every live session are recomputed
    (as the console and the API do), so nobody keeps a role until their next re-check."""
    return registry().accounts.apply_rules_now(actor=actor())


def _applied_text(applied: int) -> str:
    return f"roles updated for {applied} {'person' if applied == 1 else 'people'} now"


@roles_group.command("list", help="Show every rule.")
@json_option
@with_appcontext
def roles_list(as_json: bool) -> None:
    rules = registry().rules.all()

    def text() -> None:
        if not rules:
            click.echo("No rules yet: `sso roles map ORG[/TEAM] ROLE...` adds one.")
            return
        table(["KIND", "WHO", "ROLES"],
              [[rule.kind, describe(rule), ", ".join(rule.roles)] for rule in rules])

    emit([rule_to_dict(r) for r in rules], as_json, text)


@roles_group.command("export", help="Print the rule set as YAML (for `sso roles import`).")
@json_option
@with_appcontext
def roles_export(as_json: bool) -> None:
    rules = registry().rules.all()
    emit({"rules": [rule_to_dict(r) for r in rules]}, as_json,
         lambda: click.echo(export_yaml(rules), nl=False))


def _resolve(login: str) -> str | None:
    profile = registry().accounts.find_by_login(login)
    return profile.user_id if profile else None


@roles_group.command("import", help="Replace the rule set with FILE, after validating all of it.")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show the difference; change nothing.")
@json_option
@with_appcontext
def roles_import(path: Path, dry_run: bool, as_json: bool) -> None:
    try:
        rules = parse_yaml(path.read_text(), _resolve)
    except RuleError as exc:
        raise click.ClickException(f"{path}: {exc}; nothing was changed") from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 text; nothing was changed") from exc
    store = registry().rules
    before = store.all()
    if dry_run:
        from sso.rules_store import diff

        change = diff(before, rules)
    else:
        change = store.replace(rules)
        if not change.empty:
            _record(before, rules, source=str(path))
    applied = _apply() if not dry_run and not change.empty else 0
    data = {"dry_run": dry_run, "added": [rule_to_dict(r) for r in change.added],
            "removed": [rule_to_dict(r) for r in change.removed], "applied": applied}

    def text() -> None:
        for rule in change.removed:
            click.echo(f"- {describe(rule)}: {', '.join(rule.roles)}")
        for rule in change.added:
            click.echo(f"+ {describe(rule)}: {', '.join(rule.roles)}")
        verb = "Would change" if dry_run else "Changed"
        click.echo("No change." if change.empty else
                   f"{verb}: {len(change.added)} added, {len(change.removed)} removed"
                   + ("." if dry_run else f"; {_applied_text(applied)}."))

    emit(data, as_json, text)


@roles_group.command("explain", help="Which rules give LOGIN which roles, and why.")
@click.argument("login")
@json_option
@with_appcontext
def roles_explain(login: str, as_json: bool) -> None:
    svc = registry()
    profile = profile_or_exit(login)
    rules = svc.rules.all()
    matched = explain(profile.user_id, profile.orgs, profile.teams, rules)
    source = svc.accounts.bootstrap_source(profile.user_id)
    bootstrap = source is not None
    current = svc.accounts.with_roles(profile, rules)
    reasons: list[dict[str, Any]] = []
    for rule in matched:
        if rule.kind == "team":
            why = f"member of team {rule.target} (directly or through a team nested in it)"
        elif rule.kind == "org":
            why = f"member of organisation {rule.target}"
        else:
            why = f"is user id {rule.target}"
        reasons.append({"rule": rule_to_dict(rule), "why": why})
    data = {"login": profile.login, "user_id": profile.user_id, "groups": profile.groups,
            "roles": current.roles, "bootstrap_admin": bootstrap, "matches": reasons,
            "membership_checked_at": profile.checked_at}

    def text() -> None:
        click.echo(f"{profile.login} (id {profile.user_id}) → {', '.join(current.roles) or '-'}")
        click.echo(f"  groups: {', '.join(profile.groups) or '-'}")
        for reason in reasons:
            rule = reason["rule"]
            click.echo(f"  {', '.join(rule['roles'])} ← {reason['why']}")
        if bootstrap:
            click.echo(f"  admin ← {source}")
        if not reasons and not bootstrap:
            click.echo("  no rule matches")

    emit(data, as_json, text)


@roles_group.command("apply", help="Recompute the roles of every active session now.")
@json_option
@with_appcontext
def roles_apply(as_json: bool) -> None:
    changed = registry().accounts.apply_rules_now(actor=actor())
    emit({"changed": changed}, as_json,
         lambda: click.echo(f"Roles recomputed; {changed} signed-in people changed."))
