"""``sso clients`` and ``sso keys``: register and manage apps, rotate signing keys."""

from __future__ import annotations

import json

import pytest

CALLBACK = "https://app.example.com/callback"




def run_json(run, *args: str):
    return json.loads(run(*args, "--json").stdout)


def audit_events(run) -> list[dict]:
    return [json.loads(line) for line in run("audit", "tail", "--json").stdout.splitlines()]


def test_create_prints_id_and_secret_once(run, keycard, http):
    result = run("clients", "create", "--name", "Wiki", "--redirect-uri", CALLBACK)
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines()
                 if line.strip().startswith("client_"))
    client_id, secret = lines["  client_id"].strip(), lines["  client_secret"].strip()
    assert "shown only once" in result.output
    client = keycard.services.clients.get(client_id)
    assert client.check_client_secret(secret)
    shown = run("clients", "show", client_id).output + run("clients", "list").output
    assert client_id in shown and secret not in shown
    assert secret not in json.dumps(run_json(run, "clients", "show", client_id))
    assert secret not in json.dumps(run_json(run, "clients", "list"))


def test_create_json_and_public_clients(run):
    data = run_json(run, "clients", "create", "--name", "CLI", "--public",
                    "--redirect-uri", "http://127.0.0.1:8765/cb", "--scope", "openid",
                    "--scope", "profile", "--require-role", "engineer", "--trusted",
                    "--id-token-alg", "ES256", "--access-token-ttl", "300")
    assert data["client_secret"] is None
    client = data["client"]
    assert client["public"] is True and client["require_pkce"] is True
    assert client["scopes"] == ["openid", "profile"]
    assert client["required_roles"] == ["engineer"] and client["trusted"] is True
    assert client["id_token_alg"] == "ES256" and client["access_token_ttl"] == 300
    confidential = run_json(run, "clients", "create", "--name", "Svc",
                            "--grant-type", "client_credentials", "--role", "deployer")
    assert confidential["client_secret"] and "only once" in confidential["warning"]
    listed = run_json(run, "clients", "list")
    assert [c["name"] for c in listed] == ["CLI", "Svc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redirect-uri", "http://app.example.com/cb"], "loopback"),
        (["--redirect-uri", "https://*.example.com/cb"], "wildcard"),
        (["--redirect-uri", "https://app.example.com/cb#x"], "fragment"),
        ([], "at least one redirect URI"),
        (["--redirect-uri", CALLBACK, "--grant-type", "password"], "not supported"),
        (["--redirect-uri", CALLBACK, "--scope", "admin"], "scope 'admin'"),
        (["--redirect-uri", CALLBACK, "--require-role", "Bad Role"], "is invalid"),
        (["--public", "--grant-type", "client_credentials"], "confidential"),
        (["--redirect-uri", CALLBACK, "--id-token-alg", "HS256"], "HS256"),
    ],
)
def test_invalid_input_exits_non_zero_with_the_message(run, args, message):
    result = run("clients", "create", "--name", "Bad", *args, ok=False)
    assert message in result.output
    assert run_json(run, "clients", "list") == []


def test_update_add_remove_redirect_uris_and_flags(run):
    client_id = run_json(run, "clients", "create", "--name", "App",
                         "--redirect-uri", CALLBACK)["client_id"]
    data = run_json(run, "clients", "update", client_id, "--add-redirect-uri",
                    "https://app.example.com/cb2", "--trusted", "--name", "App 2",
                    "--require-role", "eng")
    assert data["redirect_uris"] == [CALLBACK, "https://app.example.com/cb2"]
    assert data["trusted"] is True and data["name"] == "App 2"
    data = run_json(run, "clients", "update", client_id, "--remove-redirect-uri", CALLBACK,
                    "--not-trusted", "--any-employee")
    assert data["redirect_uris"] == ["https://app.example.com/cb2"]
    assert data["trusted"] is False and data["required_roles"] == []
    assert run_json(run, "clients", "show", client_id) == data

    bad = run("clients", "update", client_id, "--redirect-uri", "http://evil.example/cb",
              ok=False)
    assert "loopback" in bad.output and "nothing was changed" in bad.output
    assert "not a redirect URI" in run("clients", "update", client_id,
                                       "--remove-redirect-uri", CALLBACK, ok=False).output
    assert "nothing to change" in run("clients", "update", client_id, ok=False).output
    assert run_json(run, "clients", "show", client_id) == data
    updated = [e for e in audit_events(run) if e["event"] == "client.updated"]
    assert len(updated) == 2 and updated[0]["subject"] == client_id


def test_rotate_secret_and_delete(run, keycard):
    created = run_json(run, "clients", "create", "--name", "App", "--redirect-uri", CALLBACK)
    client_id, old = created["client_id"], created["client_secret"]
    rotated = run_json(run, "clients", "rotate-secret", client_id)
    assert rotated["client_secret"] != old
    client = keycard.services.clients.get(client_id)
    assert client.check_client_secret(rotated["client_secret"])
    assert not client.check_client_secret(old)
    assert "shown only once" in run("clients", "rotate-secret", client_id).output

    assert run_json(run, "clients", "delete", client_id) == {"deleted": client_id,
                                                             "name": "App"}
    for command in ("show", "delete", "rotate-secret"):
        result = run("clients", command, client_id, ok=False)
        assert f"no client '{client_id}'" in result.output
    assert "no client" in run("clients", "update", client_id, "--name", "x", ok=False).output
    events = [e["event"] for e in audit_events(run)]
    for event in ("client.created", "client.secret_rotated", "client.deleted"):
        assert event in events


def test_finding_10_rotate_secret_revoke_tokens_flag(run, keycard):
    """``--revoke-tokens`` marks the client so earlier access tokens are refused."""
    client_id = run_json(run, "clients", "create", "--name", "App", "--redirect-uri",
                         CALLBACK)["client_id"]
    run_json(run, "clients", "rotate-secret", client_id)
    assert keycard.services.clients.get(client_id).tokens_valid_after == 0
    run_json(run, "clients", "rotate-secret", client_id, "--revoke-tokens")
    assert keycard.services.clients.get(client_id).tokens_valid_after > 0
    events = [e for e in audit_events(run) if e["event"] == "client.secret_rotated"]
    assert sorted(e["details"]["revoke_tokens"] for e in events) == [False, True]


def test_public_client_has_no_secret_to_rotate(run):
    client_id = run_json(run, "clients", "create", "--name", "SPA", "--public",
                         "--redirect-uri", CALLBACK)["client_id"]
    assert "public" in run("clients", "rotate-secret", client_id, ok=False).output


def test_keys_list_and_rotate(run, keycard):
    ring = keycard.services.keys
    ring.ensure()
    before = run_json(run, "keys", "list")
    assert sorted(k["alg"] for k in before) == ["ES256", "RS256"]
    assert all(k["state"] == "active" for k in before)
    assert "active" in run("keys", "list").output

    data = run_json(run, "keys", "rotate", "--grace", "7200")
    assert len(data["new"]) == 2
    states = {k["kid"]: k["state"] for k in data["keys"]}
    assert all(states[kid] == "active" for kid in data["new"])
    assert all(states[k["kid"]] == "retired" for k in before)
    assert set(data["new"]) <= {k["kid"] for k in ring.jwks()["keys"]}
    assert ring.signing_key().kid in data["new"]
    rotated = next(e for e in audit_events(run) if e["event"] == "keys.rotated")
    assert rotated["details"]["new_kids"] == data["new"] and rotated["details"]["grace"] == 7200
    assert run("keys", "rotate", "--grace", "-5", ok=False).exit_code == 2
