"""Issue #5's journey: `sso login` in a terminal, approved by bob in Chromium."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.device_support import CODE_LINE, SSO, cli_env, register_device_client


@pytest.fixture
def keycard(fast_polling_keycard: Any) -> Any:
    return fast_polling_keycard


def test_cli_login_approved_in_the_browser_prints_bobs_claims(keycard, page: Page, tmp_path):
    client = register_device_client(keycard, name="Deploy CLI")
    env = cli_env(tmp_path / "home")
    proc = subprocess.Popen(
        [SSO, "login", "--issuer", keycard.url, "--client-id", client.client_id,
         "--scope", "openid profile email groups"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:
            printed.append(line)
            match = CODE_LINE.search(line)
            if match:
                break
        assert match, printed
        url, code = match.groups()

        page.goto(url)
        page.get_by_role("button", name="Continue as bob").click()  # the development GitHub
        expect(page).to_have_url(f"{keycard.url}/device")
        page.get_by_label("Code").fill(code.lower().replace("-", ""))
        page.get_by_role("button", name="Continue").click()

        expect(page.get_by_role("heading", name="Allow Deploy CLI on your device?")).to_be_visible()
        expect(page.get_by_test_id("user-code")).to_have_text(code)
        expect(page.get_by_test_id("device-scopes")).to_contain_text("verified email address")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("heading", name="Device connected")).to_be_visible()

        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # A summary of the verified tokens (the claims themselves: `sso login --json`), kept.
    assert f"Signed in to {keycard.url} as bob." in out
    assert "acme:platform" in out
    saved = tmp_path / "home" / ".config" / "keycard" / "tokens.json"
    assert f"Tokens saved to {saved}." in out and saved.exists()
