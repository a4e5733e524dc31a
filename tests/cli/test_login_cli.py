"""``sso login`` (issue #5 item 5) as a user runs it: a subprocess talking HTTP to a live
Keycard, with no app, Redis or secret of its own; the person answers over HTTP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.device_support import (
    CODE_LINE,
    SSO,
    answer_device,
    cli_env,
    register_device_client,
)
from tests.support import sign_in, wait_until


@pytest.fixture
def keycard(fast_polling_keycard: Any) -> Any:
    return fast_polling_keycard


class LoginRun:
    """A running ``sso login``; reads its instructions as a person would."""

    def __init__(self, keycard_url: str, client_id: str, cwd: Path, *extra: str) -> None:
        env = cli_env(cwd / "home")
        self.json_mode = "--json" in extra
        self.proc = subprocess.Popen(
            [SSO, "login", "--issuer", keycard_url, "--client-id", client_id, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.seen: list[str] = []

    def instructions(self) -> tuple[str, str]:
        """(verification URL, user code) from the first lines it prints."""
        stream = self.proc.stderr if self.json_mode else self.proc.stdout
        assert stream is not None
        for line in stream:
            self.seen.append(line)
            match = CODE_LINE.search(line)
            if match:
                return match.group(1), match.group(2)
        raise AssertionError(f"no code printed: {self.seen} {self.finish()}")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, "".join(self.seen) + err


@pytest.fixture
def run_login(keycard: Any, tmp_path: Path) -> Iterator[Any]:
    runs: list[LoginRun] = []

    def start(client_id: str, *extra: str) -> LoginRun:
        run = LoginRun(keycard.url, client_id, tmp_path, *extra)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_denied_in_the_browser_exits_non_zero_with_a_clear_message(keycard, http, run_login):
    client = register_device_client(keycard)
    run = run_login(client.client_id)
    url, code = run.instructions()
    assert url == f"{keycard.url}/device"
    sign_in(http, keycard.url, "bob")
    answer_device(http, keycard.url, code, decision="deny")
    status, out, err = run.finish()
    assert status != 0
    assert "Access was denied" in err and "Traceback" not in err + out


def test_expired_code_exits_non_zero_with_a_clear_message(keycard, rdb, run_login):
    client = register_device_client(keycard)
    run = run_login(client.client_id)
    _, code = run.instructions()
    key = keycard.services.devices.key_for_user_code(code)
    assert key is not None and rdb.pexpire(key, 1)
    wait_until(lambda: not rdb.exists(key))
    status, out, err = run.finish()
    assert status != 0
    assert "code expired" in err and "sso login" in err and "Traceback" not in err + out


def test_unknown_client_exits_non_zero_without_a_code(keycard, run_login):
    status, out, err = run_login("no-such-client").finish()
    assert status != 0 and "invalid_client" in err and "enter the code" not in out


def test_json_output_has_the_verified_claims(keycard, http, run_login):
    client = register_device_client(keycard)
    run = run_login(client.client_id, "--json", "--scope", "openid profile")
    _, code = run.instructions()
    sign_in(http, keycard.url, "bob")
    answer_device(http, keycard.url, code)
    status, out, err = run.finish()
    assert status == 0, err
    data = json.loads(out)  # stdout is only the JSON document
    assert set(data) == {"access_token", "id_token_claims", "access_token_claims"}
    assert data["id_token_claims"]["preferred_username"] == "bob"
    assert data["id_token_claims"]["aud"] == [client.client_id]
    assert data["access_token_claims"]["iss"] == keycard.url
    assert data["access_token_claims"]["client_id"] == client.client_id
