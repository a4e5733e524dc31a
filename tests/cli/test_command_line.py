"""Issue #14 item 12: ``sso`` is Keycard's own command: its version, a help without
Flask's plumbing (which keeps working), a one-line help for every command, and lists
with column headers and dates a person reads."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from flask.cli import ScriptInfo

from sso.cli import build_cli
from tests.device_support import SSO, cli_env
from tests.support import sign_in

REPO = Path(__file__).resolve().parents[2]
DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2} \d{2}:\d{2})\b")
EPOCH = re.compile(r"\b1[6-9]\d{8}\b")


@pytest.fixture
def sso(keycard):
    """The ``sso`` group as the console script builds it, loading the test's Keycard."""
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(build_cli(), list(args),
                               obj=ScriptInfo(create_app=lambda: keycard.app),
                               prog_name="sso", terminal_width=80)
        assert (result.exit_code == 0) == ok, result.output
        assert "Traceback" not in result.output
        return result

    return invoke


def today_utc() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def test_item_12_version_is_keycards_and_verbose_adds_python_and_flask(tmp_path):
    out = subprocess.run([SSO, "--version"], capture_output=True, text=True, timeout=60,
                         env=cli_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"Keycard \d+\.\d+\.\d+\S*\n", out.stdout), out.stdout
    runner = CliRunner()
    for args in (["--version", "-v"], ["-v", "--version"], ["--verbose", "--version"]):
        verbose = runner.invoke(build_cli(), args, prog_name="sso").output
        lines = verbose.splitlines()
        assert lines[0] == out.stdout.strip()
        assert any(line.startswith("Python 3.") for line in lines)
        assert any(line.startswith("Flask ") for line in lines)


def test_item_12_flask_options_and_commands_are_hidden_but_work(sso, keycard, tmp_path):
    shown = sso("--help").output
    for hidden in ("--app", "-A,", "--debug", "--env-file", "-e,", " run ", " shell ",
                   " routes ", "Flask", "Werkzeug"):
        assert hidden not in shown, hidden
    assert "Keycard" in shown and " clients " in shown and " login " in shown
    # ... and they still work, as `flask --app app` users and scripts expect.
    env = cli_env(tmp_path, **keycard.env)
    routes = subprocess.run([SSO, "--app", "app:create_app", "routes"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert routes.returncode == 0, routes.stderr
    assert "/token" in routes.stdout and "/device/cli-client" in routes.stdout
    env_file = tmp_path / "keycard.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in keycard.env.items()))
    with_file = subprocess.run([SSO, "-e", str(env_file), "--debug", "routes"], cwd=tmp_path,
                               env=cli_env(tmp_path), capture_output=True, text=True,
                               timeout=60)
    assert with_file.returncode == 0, with_file.stderr
    assert "/jwks.json" in with_file.stdout
    for command in ("run", "shell"):
        assert "Usage: sso " + command in sso(command, "--help").output


def _commands(help_text: str) -> list[tuple[str, str]]:
    """(name, short help) of each line of the ``Commands:`` section."""
    if "Commands:" not in help_text:
        return []
    section = help_text.split("Commands:", 1)[1]
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^  (\S+)(?: +(.*))?$", section, re.MULTILINE)]


def test_item_12_every_command_has_a_one_line_help(sso):
    """Walk the whole tree through ``--help`` as a person would: every command listed
    says in one untruncated line what it does, and every command has a help of its own."""
    seen, faults, walked = 0, [], set()
    pending: list[list[str]] = [[]]
    while pending:
        path = pending.pop()
        text = sso(*path, "--help").output
        usage, _, rest = text.partition("\n\n")
        assert "Usage: sso" in usage
        if not rest.strip() or rest.lstrip().startswith("Options:"):
            faults.append(f"`sso {' '.join(path)}` has no help text")
        for name, short in _commands(text):
            seen += 1
            where = " ".join([*path, name])
            if not short.strip():
                faults.append(f"`sso {where}` has no one-line help")
            elif short.endswith("..."):
                faults.append(f"`sso {where}`'s one-line help is cut: {short!r}")
            pending.append([*path, name])
            walked.add(where)
    assert not faults, "\n".join(faults)
    # The walk reached every group's subcommands, and Flask's hidden ones are not listed.
    assert {"sessions list", "clients create", "keys rotate", "audit tail", "login",
            "logout", "roles explain", "users prune"} <= walked and seen >= 30
    assert not {"run", "shell", "routes"} & walked


def test_item_12_lists_have_headers_and_utc_dates(sso, keycard):
    created = json.loads(sso("clients", "create", "--name", "Wiki", "--redirect-uri",
                             "https://wiki.example.com/cb", "--json").stdout)
    client_id = created["client_id"]
    sso("roles", "map", "acme/platform", "engineer")
    today = today_utc()

    listed = sso("clients", "list").output.splitlines()
    assert listed[0].split() == ["CLIENT", "ID", "NAME", "TYPE", "CREATED", "(UTC)", "GRANTS"]
    assert client_id in listed[1] and "Wiki" in listed[1]
    assert DATE.search(listed[1]).group(1).startswith(today)

    shown = sso("clients", "show", client_id).output
    created_line = next(line for line in shown.splitlines() if "created_at" in line)
    assert re.search(rf"{today} \d\d:\d\d UTC$", created_line), created_line
    assert not EPOCH.search(shown), shown
    assert json.loads(sso("clients", "show", client_id, "--json").stdout)["created_at"] > 1e9

    keys = sso("keys", "list").output.splitlines()
    assert keys[0].split()[:5] == ["KEY", "ID", "ALG", "STATE", "CREATED"]
    assert "RETIRES (UTC)" in keys[0] and DATE.search(keys[1]).group(1).startswith(today)
    assert not EPOCH.search("\n".join(keys))

    audit = sso("audit", "tail").output.splitlines()
    assert audit[0].startswith("TIME (UTC)") and "EVENT" in audit[0]
    assert any("client.created" in line and DATE.match(line) for line in audit[1:])
    assert all(json.loads(line)["event"] for line in
               sso("audit", "tail", "--json").stdout.splitlines())

    rules = sso("roles", "list").output.splitlines()
    assert rules[0].split() == ["KIND", "WHO", "ROLES"] and "engineer" in rules[1]


def test_item_12_sessions_list_without_user_lists_everyone(sso, keycard):
    for login in ("bob", "carol"):
        sign_in(requests.Session(), keycard.url, login)
    everyone = sso("sessions", "list").output.splitlines()
    assert everyone[0].split()[:4] == ["ID", "PERSON", "STARTED", "(UTC)"]
    people = sorted(line.split()[1] for line in everyone[1:])
    assert people == ["bob", "carol"]
    assert all(DATE.search(line).group(1).startswith(today_utc()) for line in everyone[1:])
    assert not EPOCH.search("\n".join(everyone))
    bob = sso("sessions", "list", "--user", "bob").output.splitlines()
    assert len(bob) == 2 and " bob " in bob[1]
    rows = json.loads(sso("sessions", "list", "--json").stdout)
    assert sorted(r["login"] for r in rows) == ["bob", "carol"]
    sso("sessions", "end", "--user", "bob")
    sso("sessions", "end", "--user", "carol")
    assert sso("sessions", "list").output.strip() == "No active sessions."
