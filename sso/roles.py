"""Role evaluation: a pure function from (user, membership, rules) to roles.

No Flask and no Redis here, so it can be tested alone (and property-tested).
Rule storage lives in :mod:`sso.rules_store`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ADMIN_ROLE = "admin"
ROLE_NAME = re.compile(r"^[a-z0-9:_-]{1,64}$")


def valid_role(name: str) -> bool:
    return bool(ROLE_NAME.fullmatch(name))


@dataclass(frozen=True)
class Rule:
    """``kind`` is ``org`` (target ``acme``), ``team`` (``acme/platform``) or ``user``
    (target is the numeric user id; ``label`` keeps the login for display)."""

    kind: str
    target: str
    roles: tuple[str, ...]
    label: str = ""

    def matches(self, user_id: str, orgs: Iterable[str], teams: Iterable[str]) -> bool:
        if self.kind == "user":
            return self.target == user_id
        if self.kind == "org":
            return self.target in set(orgs)
        if self.kind == "team":
            # ``teams`` already holds the ancestors of nested teams, so a member of
            # acme/sre matches a rule on its parent acme/platform.
            return self.target in set(teams)
        return False


def evaluate(
    user_id: str,
    login: str,
    orgs: Iterable[str],
    teams: Iterable[str],
    rules: Iterable[Rule],
    bootstrap_admins: Iterable[str] = (),
) -> list[str]:
    """The union of the roles of every matching rule (plus ``admin`` for bootstrap admins).

    ``bootstrap_admins`` are numeric user ids (``Accounts.bootstrap_ids``: the numeric
    entries of ``SSO_BOOTSTRAP_ADMINS`` and the ids its login entries are pinned to).
    Like user rules, they never match by ``login``: a login can be renamed, freed and
    claimed by someone else; the numeric id cannot."""
    orgs, teams = set(orgs), set(teams)
    roles: set[str] = set()
    for rule in rules:
        if rule.matches(user_id, orgs, teams):
            roles.update(rule.roles)
    if user_id in set(bootstrap_admins):
        roles.add(ADMIN_ROLE)
    return sorted(roles)


def explain(
    user_id: str, orgs: Iterable[str], teams: Iterable[str], rules: Iterable[Rule]
) -> list[Rule]:
    """The rules that grant this user something, in the order given."""
    orgs, teams = set(orgs), set(teams)
    return [rule for rule in rules if rule.matches(user_id, orgs, teams)]
