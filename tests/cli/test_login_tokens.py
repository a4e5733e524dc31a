"""Issue #14 item 13: ``sso login`` as a real login. The issuer from SSO_ISSUER or the
config file, the default device client (``sso clients create --device``, ``sso dev``),
tokens kept in ``~/.config/keycard/tokens.json`` (0600) and refreshed, ``--print-token``
for scripts, ``sso logout``, and one clear sentence for every failure. Each ``sso`` is a
subprocess with a home of its own, talking HTTP to a live Keycard; bob approves over HTTP."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask.cli import ScriptInfo

from sso.cli import build_cli
from sso.dev import register_cli_client
from tests.device_support import CODE_LINE, SSO, answer_device, cli_env
from tests.support import free_port, sign_in, wait_until

INTERNALS = ("Traceback", "urllib3", "HTTPConnectionPool", "Max retries", "requests.",
             "authlib", "Errno")


@pytest.fixture
def keycard(fast_polling_keycard: Any) -> Any:
    return fast_polling_keycard


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


class Sso:
    """``sso`` run by a person whose home is ``home``."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = cli_env(home, **env)
        self.procs: list[subprocess.Popen[str]] = []

    @property
    def tokens_file(self) -> Path:
        base = Path(self.env.get("XDG_CONFIG_HOME") or self.home / ".config")
        return base / "keycard" / "tokens.json"

    def tokens(self) -> dict[str, Any]:
        return dict(json.loads(self.tokens_file.read_text()))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SSO, *args], env=self.env, cwd=self.home, capture_output=True,
                              text=True, timeout=60)

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([SSO, *args], env=self.env, cwd=self.home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def login(self, keycard_url: str, *args: str, person: str = "bob",
              stream: str = "stdout") -> tuple[str, str]:
        """Run ``sso login ARGS``, approve it as ``person``; returns (stdout, stderr)."""
        proc = self.start("login", *args)
        seen = []
        for line in getattr(proc, stream):
            seen.append(line)
            match = CODE_LINE.search(line)
            if match:
                break
        else:
            raise AssertionError(f"no code printed: {seen} {proc.communicate(timeout=30)}")
        http = requests.Session()
        sign_in(http, keycard_url, person)
        answer_device(http, keycard_url, match.group(2))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        if stream == "stdout":
            out = "".join(seen) + out
        else:
            err = "".join(seen) + err
        return out, err


@pytest.fixture
def make_person(home: Path) -> Iterator[Any]:
    made: list[Sso] = []

    def make(**env: str) -> Sso:
        made.append(Sso(home, **env))
        return made[-1]

    yield make
    for proc in (p for runner in made for p in runner.procs):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def person(make_person: Any) -> Sso:
    return make_person()  # type: ignore[no-any-return]


def default_client(keycard: Any, **fields: Any) -> str:
    return str(keycard.services.clients.create_default_device_client(**fields).client_id)


def userinfo(keycard: Any, access_token: str) -> requests.Response:
    return requests.get(f"{keycard.url}/userinfo", timeout=10,
                        headers={"Authorization": f"Bearer {access_token}"})


def refresh(keycard: Any, client_id: str, refresh_token: str) -> requests.Response:
    return requests.post(f"{keycard.url}/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    """The error a person sees: exit 1, one line on stderr, nothing of the libraries."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in INTERNALS:
        assert word not in result.stderr + result.stdout, result.stderr
    return lines[0]


def test_item_13_default_device_client_from_create_device_and_sso_dev(keycard):
    missing = requests.get(f"{keycard.url}/device/cli-client", timeout=10)
    assert missing.status_code == 404 and "sso clients create --device" in missing.text
    runner = CliRunner()

    def sso(*args: str) -> Any:
        return runner.invoke(build_cli(), list(args), prog_name="sso",
                             obj=ScriptInfo(create_app=lambda: keycard.app))

    created = sso("clients", "create", "--device", "--json")
    assert created.exit_code == 0, created.output
    data = json.loads(created.stdout)
    client = data["client"]
    assert data["client_secret"] is None and client["public"] is True
    assert client["name"] == "Keycard CLI" and "offline_access" in client["scopes"]
    assert set(client["grant_types"]) == {"urn:ietf:params:oauth:grant-type:device_code",
                                          "refresh_token"}
    served = requests.get(f"{keycard.url}/device/cli-client", timeout=10).json()
    assert served["client_id"] == data["client_id"]
    again = sso("clients", "create", "--device")
    assert again.exit_code == 1 and data["client_id"] in again.output
    assert "already" in again.output and "Traceback" not in again.output
    # `sso dev` registers the same client on every run; a new Redis gets a new one.
    assert register_cli_client(keycard.app) == data["client_id"]
    assert sso("clients", "delete", data["client_id"]).exit_code == 0
    fresh = register_cli_client(keycard.app)
    assert fresh != data["client_id"] and register_cli_client(keycard.app) == fresh
    assert requests.get(f"{keycard.url}/device/cli-client", timeout=10).json()[
        "client_id"] == fresh


def test_item_13_login_with_the_issuer_from_the_config_file_saves_tokens_0600(keycard, person):
    client_id = default_client(keycard)
    config = person.home / ".config" / "keycard"
    config.mkdir(parents=True, mode=0o755)
    (config / "config.toml").write_text(f'issuer = "{keycard.url}"\n')
    out, _ = person.login(keycard.url)
    assert f"Signed in to {keycard.url} as bob." in out and str(person.tokens_file) in out
    assert "  roles:   -\n" in out and "  groups:  acme, " in out and "acme:platform" in out
    assert "refreshed automatically" in out
    assert mode(person.tokens_file) == 0o600 and mode(config) == 0o700
    saved = person.tokens()
    assert saved["issuer"] == keycard.url and saved["client_id"] == client_id
    assert saved["refresh_token"] and saved["login"] == "bob"
    assert sorted(p.name for p in config.iterdir()) == ["config.toml", "tokens.json"]
    # Scripts get the saved access token without a network round trip, and it works.
    printed = person.run("login", "--print-token")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == saved["access_token"] and printed.stderr == ""
    assert userinfo(keycard, printed.stdout.strip()).json()["preferred_username"] == "bob"


def test_item_13_issuer_from_sso_issuer_and_xdg_config_home(keycard, home, make_person):
    default_client(keycard)
    person = make_person(SSO_ISSUER=keycard.url, XDG_CONFIG_HOME=str(home / "xdg"))
    out, _ = person.login(keycard.url, "--json", stream="stderr")
    assert json.loads(out)["id_token_claims"]["preferred_username"] == "bob"
    assert person.tokens_file == home / "xdg" / "keycard" / "tokens.json"
    assert mode(person.tokens_file) == 0o600 and mode(person.tokens_file.parent) == 0o700
    assert not (home / ".config").exists()


def test_item_13_print_token_refreshes_an_expired_access_token(keycard, person):
    client_id = default_client(keycard, access_token_ttl=60)
    person.login(keycard.url, "--issuer", keycard.url)
    first = person.tokens()
    assert first["expires_at"] <= time.time() + 60  # the client's short lifetime
    # The clock moves on: the saved access token has expired.
    person.tokens_file.write_text(json.dumps(dict(first, expires_at=1_000_000)))
    printed = person.run("login", "--issuer", keycard.url, "--print-token")
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    assert token != first["access_token"] and "enter the code" not in printed.stderr
    assert userinfo(keycard, token).json()["preferred_username"] == "bob"
    second = person.tokens()
    assert second["access_token"] == token and second["expires_at"] > 1_000_000
    assert second["refresh_token"] != first["refresh_token"]  # rotated, and saved
    assert mode(person.tokens_file) == 0o600
    assert refresh(keycard, client_id, second["refresh_token"]).status_code == 200


def test_item_13_scripts_refreshing_at_once_keep_the_sign_in(keycard, person):
    """Refresh tokens rotate and a reused one ends the whole sign-in: four scripts asking
    for a token at the same moment must spend the saved refresh token only once."""
    client_id = default_client(keycard)
    person.login(keycard.url, "--issuer", keycard.url)
    person.tokens_file.write_text(json.dumps(dict(person.tokens(), expires_at=1_000_000)))
    procs = [person.start("login", "--issuer", keycard.url, "--print-token")
             for _ in range(4)]
    results = [(p.communicate(timeout=60), p.returncode) for p in procs]
    assert all(code == 0 for _, code in results), results
    printed = {out.strip() for (out, _), _ in results}
    assert printed == {person.tokens()["access_token"]}
    assert refresh(keycard, client_id, person.tokens()["refresh_token"]).status_code == 200


def test_item_13_print_token_signs_in_again_when_the_refresh_token_has_ended(keycard, person):
    default_client(keycard)
    person.login(keycard.url, "--issuer", keycard.url)
    first = person.tokens()
    keycard.services.accounts.end_all_sessions(
        keycard.services.accounts.find_by_login("bob").user_id)
    person.tokens_file.write_text(json.dumps(dict(first, expires_at=1_000_000)))
    out, err = person.login(keycard.url, "--issuer", keycard.url, "--print-token",
                            stream="stderr")
    assert "signing in again" in err and "enter the code" in err
    assert out.strip() == person.tokens()["access_token"] != first["access_token"]
    assert userinfo(keycard, out.strip()).status_code == 200


def test_item_13_logout_revokes_the_refresh_token_and_deletes_the_file(keycard, person):
    client_id = default_client(keycard)
    person.login(keycard.url, "--issuer", keycard.url)
    saved = person.tokens()
    result = person.run("logout")
    assert result.returncode == 0, result.stderr
    assert f"Signed out of {keycard.url}" in result.stdout
    assert not person.tokens_file.exists()
    refused = refresh(keycard, client_id, saved["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # Revoking the grant ends its access tokens too (within the cache's seconds).
    wait_until(lambda: userinfo(keycard, saved["access_token"]).status_code == 401)
    again = person.run("logout", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["signed_in"] is False


def test_item_13_errors_are_one_clear_sentence(keycard, person):
    dead = f"http://127.0.0.1:{free_port()}"
    line = one_sentence(person.run("login", "--issuer", dead))
    assert line == (f"Error: Cannot reach Keycard at {dead}: nothing is listening there "
                    "(connection refused).")

    line = one_sentence(person.run("login", "--issuer", keycard.url))
    assert "no default device client" in line and "sso clients create --device" in line

    line = one_sentence(person.run("login", "--issuer", keycard.url, "--client-id", "nope"))
    assert "does not know the client 'nope'" in line

    line = one_sentence(person.run("login"))
    assert "Which Keycard?" in line and "SSO_ISSUER" in line and "config.toml" in line

    line = one_sentence(person.run("login", "--issuer", "sso.example.com"))
    assert "is not an issuer URL" in line

    config = person.home / ".config" / "keycard"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("issuer = [1]\n")
    assert "must be a string" in one_sentence(person.run("login"))

    # Logout against an issuer that does not answer keeps the tokens for another try.
    person.tokens_file.write_text(json.dumps({
        "issuer": dead, "client_id": "c", "access_token": "a", "refresh_token": "r",
        "expires_at": 1}))
    line = one_sentence(person.run("logout"))
    assert "Cannot reach Keycard" in line and "kept" in line
    assert person.tokens_file.exists()
