"""``sso roles`` and ``sso audit``: mapping, import/export, explain, apply now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import sign_in


def rules_json(run) -> list[dict]:
    return json.loads(run("roles", "list", "--json").stdout)


def test_map_org_team_and_user_then_list_and_unmap(run, keycard, http):
    sign_in(http, keycard.url, "carol")  # user rules need someone who has signed in
    run("roles", "map", "acme", "employee")
    run("roles", "map", "acme/platform", "deployer", "oncall")
    run("roles", "map", "--user", "carol", "auditor")
    assert rules_json(run) == [
        {"org": "acme", "roles": ["employee"]},
        {"team": "acme/platform", "roles": ["deployer", "oncall"]},
        {"user": "carol", "id": 1003, "roles": ["auditor"]},
    ]
    run("roles", "unmap", "acme/platform", "oncall")
    run("roles", "unmap", "--user", "carol")
    assert rules_json(run) == [
        {"org": "acme", "roles": ["employee"]},
        {"team": "acme/platform", "roles": ["deployer"]},
    ]


def test_map_refuses_bad_role_names_and_unknown_users(run):
    result = run("roles", "map", "acme", "Bad Role", ok=False)
    assert result.exit_code != 0 and "invalid" in result.output
    result = run("roles", "map", "--user", "nobody", "x", ok=False)
    assert result.exit_code != 0 and "GitHub has no user 'nobody'" in result.output
    assert rules_json(run) == []


def test_export_then_import_round_trip_keeps_rules_identical(run, keycard, http, tmp_path: Path):
    sign_in(http, keycard.url, "alice")
    run("roles", "map", "acme", "employee")
    run("roles", "map", "acme/sre", "oncall", "deployer")
    run("roles", "map", "@alice", "auditor")
    exported = run("roles", "export").output
    before = rules_json(run)
    (tmp_path / "rules.yaml").write_text(exported)
    run("roles", "import", str(tmp_path / "empty.yaml"), ok=False)  # missing file refused
    (tmp_path / "empty.yaml").write_text("rules: []\n")
    run("roles", "import", str(tmp_path / "empty.yaml"))
    assert rules_json(run) == []
    run("roles", "import", str(tmp_path / "rules.yaml"))
    assert rules_json(run) == before
    assert run("roles", "export").output == exported


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("rules:\n  - team: acme/sre\n    roles: [ok]\n    colour: blue\n", "line 4: unknown key"),
        ("rules:\n  - org: acme\n    roles: [ok]\n  - org: globex\n    roles: [Not-Valid]\n",
         "line 4: role 'Not-Valid' is invalid"),
        ("rules:\n  - org: acme\n    roles: [ok\n  - team: x\n", "line 4"),
        ("rules:\n  - org: acme\n    roles: [ok]\nextra: 1\n", "line 4: unknown key 'extra'"),
        ("rules:\n  - user: ghost\n    roles: [x]\n", "line 2: @ghost has never signed in"),
        ("rules:\n  - org: acme\n    team: acme/x\n    roles: [x]\n", "line 2: a rule names"),
    ],
)
def test_invalid_file_is_refused_naming_the_line_and_nothing_changes(
    run, tmp_path: Path, content: str, message: str
):
    run("roles", "map", "acme", "employee")
    before = rules_json(run)
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = run("roles", "import", str(bad), ok=False)
    assert result.exit_code != 0
    assert message in result.output and "nothing was changed" in result.output
    assert rules_json(run) == before


def test_import_dry_run_prints_the_difference_and_changes_nothing(run, tmp_path: Path):
    run("roles", "map", "acme", "employee")
    new = tmp_path / "new.yaml"
    new.write_text("rules:\n  - team: acme/sre\n    roles: [oncall]\n")
    result = run("roles", "import", "--dry-run", str(new))
    assert "- acme: employee" in result.output and "+ acme/sre: oncall" in result.output
    assert rules_json(run) == [{"org": "acme", "roles": ["employee"]}]
    data = json.loads(run("roles", "import", "--dry-run", "--json", str(new)).stdout)
    assert data["added"] == [{"team": "acme/sre", "roles": ["oncall"]}]


def test_explain_names_the_rules_matching_a_user_in_nested_teams(run, keycard, http):
    sign_in(http, keycard.url, "bob")  # direct member of acme/sre, nested in platform, engineering
    run("roles", "map", "acme/engineering", "engineer")
    run("roles", "map", "acme/platform", "deployer")
    run("roles", "map", "acme/frontend", "ui")
    data = json.loads(run("roles", "explain", "bob", "--json").stdout)
    assert data["roles"] == ["deployer", "engineer"]
    assert sorted(m["rule"]["team"] for m in data["matches"]) == ["acme/engineering",
                                                                   "acme/platform"]
    text = run("roles", "explain", "bob").output
    assert "deployer ← member of team acme/platform" in text
    assert "acme/frontend" not in text


def test_apply_now_changes_roles_of_active_sessions_without_new_sign_in(run, keycard, http):
    sign_in(http, keycard.url, "bob")
    assert "deployer" not in http.get(keycard.url + "/").text
    # A rule written without applying it (as an older release's `roles map` did):
    keycard.services.rules.map("team", "acme/platform", ("deployer",))
    assert "deployer" not in http.get(keycard.url + "/").text  # applies at the next re-check...
    data = json.loads(run("roles", "apply", "--json").stdout)
    assert data == {"changed": 1}
    assert "deployer" in http.get(keycard.url + "/").text  # ...or now, on demand


def test_rule_changes_are_in_the_audit_trail(run):
    run("roles", "map", "acme", "employee")
    events = [json.loads(line) for line in run("audit", "tail", "--json").stdout.splitlines()]
    change = next(e for e in events if e["event"] == "rules.changed")
    assert change["actor"].startswith("cli")
    assert change["details"]["before"] == [] and change["details"]["after"] == [
        {"org": "acme", "roles": ["employee"]}
    ]


def test_item_3_cli_rule_changes_take_effect_in_live_sessions_at_once(run, keycard, http):
    """Like the console and the API: `sso roles map/unmap/import` recompute the roles of
    live sessions, so nobody keeps (or waits for) a role until their next re-check."""
    sign_in(http, keycard.url, "bob")

    def roles() -> str:
        return http.get(keycard.url + "/").text  # the portal shows the live session's roles

    mapped = run("roles", "map", "acme/sre", "oncall")
    assert "roles updated for 1 person now" in mapped.output
    assert "oncall" in roles()
    unmapped = run("roles", "unmap", "acme/sre")
    assert "roles updated for 1 person now" in unmapped.output
    assert "oncall" not in roles()
