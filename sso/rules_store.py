"""Role-mapping rules in Redis, and their YAML file form.

The whole rule set is one JSON document under one key: rule sets are small, every
sign-in needs all of them, and an import must replace them atomically. Edits use
optimistic transactions (WATCH/MULTI), so two admins editing at once never lose a change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import yaml

from sso.cache import ExpiringCache
from sso.roles import Rule, valid_role
from sso.storage import Store, guard
from sso.upstream.base import valid_login
from sso.yamlfile import compose

KINDS = ("org", "team", "user")


class RuleError(ValueError):
    """A rule or rule file is invalid; the message says where and why."""


def parse_target(text: str) -> tuple[str, str]:
    """``acme`` → org, ``acme/platform`` → team, ``@octocat`` → user (login)."""
    text = text.strip()
    if text.startswith("@"):
        login = text[1:]
        if not login or not valid_login(login):
            raise RuleError(f"{text!r} is not a GitHub login")
        return "user", login
    if ":" in text and "/" not in text:  # pasted from a token's groups claim
        raise RuleError(f"{text!r}: write a team as ORG/TEAM ({text.replace(':', '/', 1)!r}); "
                        "ORG:TEAM is the form tokens carry")
    org, _, team = text.partition("/")
    if not valid_login(org) or (team and not _valid_slug(team)) or team.count("/"):
        raise RuleError(f"{text!r} is not ORG or ORG/TEAM")
    return ("team", f"{org.lower()}/{team.lower()}") if team else ("org", org.lower())


def _valid_slug(slug: str) -> bool:
    return 0 < len(slug) <= 100 and all(c.isalnum() or c in "-_." for c in slug)


def check_roles(roles: list[str] | tuple[str, ...], where: str = "") -> tuple[str, ...]:
    if not roles:
        raise RuleError(f"{where}a rule needs at least one role")
    for role in roles:
        if not isinstance(role, str) or not valid_role(role):
            raise RuleError(
                f"{where}role {role!r} is invalid: use 1 to 64 lowercase letters, digits "
                "and ':_-'"
            )
    return tuple(sorted(set(roles)))


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    if rule.kind == "user":
        return {"user": rule.label, "id": int(rule.target), "roles": list(rule.roles)}
    return {rule.kind: rule.target, "roles": list(rule.roles)}


def describe(rule: Rule) -> str:
    return f"@{rule.label}" if rule.kind == "user" else rule.target


@dataclass(frozen=True)
class Change:
    """What an import would do, for ``--dry-run`` and the audit log."""

    added: list[Rule]
    removed: list[Rule]

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


class RuleStore:
    """The rule set: read whole, changed atomically."""

    def __init__(self, store: Store, *, cache_seconds: float = 2.0) -> None:
        self.store = store
        self.key = store.keys.rules()
        # Every sign-in, refresh and code exchange evaluates the rules; a two-second
        # per-process cache saves that Redis read on the hot paths. Rules apply at the next
        # re-check anyway, so two seconds of staleness in another process is invisible.
        self._cached: ExpiringCache[str, list[Rule]] = ExpiringCache(1, cache_seconds)

    def clear_cache(self) -> None:
        """Forget the cached rules (Redis lost its data: see :mod:`sso.epoch`)."""
        self._cached.clear()

    @guard
    def all(self) -> list[Rule]:
        cached = self._cached.get("rules")
        if cached is not None:
            return list(cached)
        rules = _decode(self.store.redis.get(self.key))
        self._cached.put("rules", rules)
        return list(rules)

    def _mutate(self, change: Callable[[list[Rule]], list[Rule]]) -> tuple[list[Rule], list[Rule]]:
        """Apply ``change`` under WATCH; retried when another writer got in first."""
        with self.store.redis.pipeline(transaction=True) as pipe:  # WATCH needs it in a cluster
            while True:
                try:
                    pipe.watch(self.key)
                    before = _decode(pipe.get(self.key))
                    after = _canonical(change(list(before)))
                    pipe.multi()
                    pipe.set(self.key, _encode(after))
                    pipe.execute()
                    self._cached.clear()
                    return before, after
                except redis.WatchError:
                    continue

    @guard
    def map(self, kind: str, target: str, roles: tuple[str, ...], label: str = "") -> Rule:
        roles = check_roles(roles)

        def change(rules: list[Rule]) -> list[Rule]:
            for i, rule in enumerate(rules):
                if (rule.kind, rule.target) == (kind, target):
                    rules[i] = Rule(kind, target, tuple(sorted({*rule.roles, *roles})),
                                    label or rule.label)
                    return rules
            return [*rules, Rule(kind, target, roles, label)]

        _, after = self._mutate(change)
        return next(r for r in after if (r.kind, r.target) == (kind, target))

    @guard
    def unmap(self, kind: str, target: str, roles: tuple[str, ...] = ()) -> Rule | None:
        """Remove roles from a rule (all of them when ``roles`` is empty)."""
        removed: list[Rule] = []

        def change(rules: list[Rule]) -> list[Rule]:
            out = []
            for rule in rules:
                if (rule.kind, rule.target) != (kind, target):
                    out.append(rule)
                    continue
                removed.append(rule)
                left = tuple(r for r in rule.roles if roles and r not in roles)
                if left:
                    out.append(Rule(kind, target, left, rule.label))
            return out

        self._mutate(change)
        return removed[0] if removed else None

    @guard
    def replace(self, rules: list[Rule]) -> Change:
        before, after = self._mutate(lambda _: rules)
        return diff(before, after)


def diff(before: list[Rule], after: list[Rule]) -> Change:
    old, new = set(_canonical(before)), set(_canonical(after))
    return Change(added=_canonical(list(new - old)), removed=_canonical(list(old - new)))


def _canonical(rules: list[Rule]) -> list[Rule]:
    return sorted(rules, key=lambda r: (KINDS.index(r.kind), r.target))


def _encode(rules: list[Rule]) -> str:
    return json.dumps([[r.kind, r.target, list(r.roles), r.label] for r in rules])


def _decode(raw: str | None) -> list[Rule]:
    if not raw:
        return []
    return [Rule(kind, target, tuple(roles), label)
            for kind, target, roles, label in json.loads(raw)]


# -- the YAML file form --------------------------------------------------------------------


def export_yaml(rules: list[Rule]) -> str:
    header = "# Keycard role mappings: `sso roles import FILE` replaces the rule set with this.\n"
    body = yaml.safe_dump({"rules": [rule_to_dict(r) for r in _canonical(rules)]},
                          sort_keys=False, default_flow_style=None)
    return header + body


def parse_yaml(text: str, resolve_login: Callable[[str], str | None]) -> list[Rule]:
    """Validate a whole rule file; :class:`RuleError` names the line of the first problem.

    ``resolve_login`` maps a login to its numeric id for user rules without ``id``.
    """
    root = compose(text, RuleError)
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise RuleError(f"line {root.start_mark.line + 1}: expected a mapping with a 'rules' list")
    top = {k.value: v for k, v in root.value}
    unknown = [k for k, _ in root.value if k.value != "rules"]
    if unknown:
        raise RuleError(f"line {unknown[0].start_mark.line + 1}: unknown key {unknown[0].value!r}")
    seq = top.get("rules")
    if seq is None or (isinstance(seq, yaml.ScalarNode) and seq.value in ("", "null", "~")):
        return []
    if not isinstance(seq, yaml.SequenceNode):
        raise RuleError(f"line {seq.start_mark.line + 1}: 'rules' must be a list")
    rules: dict[tuple[str, str], Rule] = {}
    for node in seq.value:
        rule = _rule_from_node(node, resolve_login)
        key = (rule.kind, rule.target)
        if key in rules:
            raise RuleError(f"line {node.start_mark.line + 1}: duplicate rule for "
                            f"{describe(rule)}")
        rules[key] = rule
    return _canonical(list(rules.values()))


def _rule_from_node(node: yaml.Node, resolve_login: Callable[[str], str | None]) -> Rule:
    line = node.start_mark.line + 1
    where = f"line {line}: "
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(f"{where}each rule is a mapping like {{team: acme/platform, roles: [x]}}")
    data: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in (*KINDS, "roles", "id"):
            raise RuleError(f"line {key_node.start_mark.line + 1}: unknown key {key!r} "
                            "(expected org, team, user, id, roles)")
        data[key] = yaml.safe_load(yaml.serialize(value_node))
    kinds = [k for k in KINDS if k in data]
    if len(kinds) != 1:
        raise RuleError(f"{where}a rule names exactly one of org, team or user")
    roles = data.get("roles")
    if not isinstance(roles, list):
        raise RuleError(f"{where}'roles' must be a list of role names")
    checked = check_roles(roles, where)
    kind = kinds[0]
    value = str(data[kind])
    if kind == "user":
        login = value.lstrip("@")
        if not valid_login(login):
            raise RuleError(f"{where}{value!r} is not a GitHub login")
        user_id = data.get("id")
        if user_id is None:
            user_id = resolve_login(login)
            if user_id is None:
                raise RuleError(f"{where}@{login} has never signed in; add their numeric 'id'")
        if not str(user_id).isdigit():
            raise RuleError(f"{where}'id' must be GitHub's numeric user id")
        return Rule("user", str(int(user_id)), checked, login)
    if "id" in data:
        raise RuleError(f"{where}'id' only applies to user rules")
    try:
        parsed_kind, target = parse_target(value)
    except RuleError as exc:
        raise RuleError(f"{where}{exc}") from exc
    if parsed_kind != kind:
        raise RuleError(f"{where}{kind} {value!r} looks like a {parsed_kind}")
    return Rule(kind, target, checked)
