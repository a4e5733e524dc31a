"""Role evaluation: a pure function, tested alone, with properties (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from sso.roles import Rule, evaluate, explain, valid_role

orgs = st.sampled_from(["acme", "globex", "initech"])
slugs = st.sampled_from(["platform", "sre", "frontend", "security"])
role_names = st.from_regex(r"[a-z0-9][a-z0-9:_-]{0,8}", fullmatch=True)
teams = st.builds(lambda o, s: f"{o}/{s}", orgs, slugs)
user_ids = st.sampled_from(["1", "2", "3"])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    kind = draw(st.sampled_from(["org", "team", "user"]))
    target = draw({"org": orgs, "team": teams, "user": user_ids}[kind])
    return Rule(kind, target, tuple(draw(st.lists(role_names, min_size=1, max_size=3))))


rule_sets = st.lists(rules(), max_size=8)
memberships = st.tuples(user_ids, st.sets(orgs), st.sets(teams))


@given(memberships, rule_sets)
def test_roles_are_the_union_of_every_matching_rule(member, ruleset):
    user_id, user_orgs, user_teams = member
    got = set(evaluate(user_id, "someone", user_orgs, user_teams, ruleset))
    expected = set()
    for rule in ruleset:
        if rule.matches(user_id, user_orgs, user_teams):
            expected |= set(rule.roles)
    assert got == expected
    for rule in ruleset:  # each rule alone grants a subset of the union
        assert set(evaluate(user_id, "someone", user_orgs, user_teams, [rule])) <= got


@given(memberships, rule_sets, st.randoms())
def test_rule_order_does_not_matter(member, ruleset, rnd: random.Random):
    shuffled = list(ruleset)
    rnd.shuffle(shuffled)
    assert evaluate(*member[:1], "x", *member[1:], ruleset) == evaluate(
        *member[:1], "x", *member[1:], shuffled
    )


@given(memberships)
def test_no_rule_means_no_roles(member):
    user_id, user_orgs, user_teams = member
    assert evaluate(user_id, "someone", user_orgs, user_teams, []) == []


@given(memberships, rule_sets)
def test_adding_a_rule_never_removes_a_role(member, ruleset):
    before = set(evaluate(member[0], "x", member[1], member[2], ruleset[:-1]))
    after = set(evaluate(member[0], "x", member[1], member[2], ruleset))
    assert before <= after


def test_org_rule_matches_members_of_that_org_only():
    rule = Rule("org", "acme", ("employee",))
    assert evaluate("1", "a", ["acme"], [], [rule]) == ["employee"]
    assert evaluate("1", "a", ["globex"], [], [rule]) == []


def test_team_rule_matches_members_of_nested_child_teams():
    # The connector reports ancestors of nested teams: sre ⊂ platform ⊂ engineering.
    teams = ["acme/sre", "acme/platform", "acme/engineering"]
    rules = [Rule("team", "acme/platform", ("deployer",)), Rule("team", "acme/frontend", ("ui",))]
    assert evaluate("2", "bob", ["acme"], teams, rules) == ["deployer"]
    assert explain("2", ["acme"], teams, rules) == [rules[0]]


def test_user_rule_matches_the_numeric_id_not_the_login():
    rule = Rule("user", "1001", ("auditor",), label="alice")
    assert evaluate("1001", "alice-renamed", [], [], [rule]) == ["auditor"]
    assert evaluate("1002", "alice", [], [], [rule]) == []


def test_finding_2_bootstrap_admins_match_ids_never_logins():
    assert evaluate("9", "Alice", [], [], [], bootstrap_admins=["9"]) == ["admin"]
    assert evaluate("9", "bob", [], [], [], bootstrap_admins=["9"]) == ["admin"]  # renamed
    assert evaluate("10", "alice", [], [], [], bootstrap_admins=["9"]) == []  # the login reused
    assert evaluate("10", "alice", [], [], [], bootstrap_admins=["alice"]) == []


def test_role_names_are_lowercase_and_restricted():
    assert valid_role("deployer") and valid_role("team:sre_on-call")
    for bad in ("Admin", "has space", "", "emoji✓", "a" * 65, "semi;colon"):
        assert not valid_role(bad)


def test_the_rule_cache_is_dropped_by_a_write_in_this_process(redis_server, prefix):
    """Reads are cached a few seconds per process; a change made here shows at once."""
    from sso.rules_store import RuleStore
    from sso.storage import Store

    rules = RuleStore(Store(redis_server.client(), prefix), cache_seconds=60)
    assert rules.all() == []
    rules.map("team", "acme/platform", ("deployer",))
    assert [r.roles for r in rules.all()] == [("deployer",)]
    rules.unmap("team", "acme/platform")
    assert rules.all() == []
