"""Issue #4's journey: sign in to an internal app through Keycard, in Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from sso.demoapp import create_demo_app
from tests.support import LiveServer


@pytest.fixture
def demo(keycard):
    server = LiveServer()
    registry = keycard.services.clients
    client, secret = registry.create(
        name="Demo app", redirect_uris=[f"{server.url}/callback"],
        post_logout_redirect_uris=[f"{server.url}/"], home_url=f"{server.url}/", trusted=True)
    server.start(create_demo_app(issuer=keycard.url, client_id=client.client_id,
                                 client_secret=str(secret), base_url=server.url))
    yield server
    server.stop()


def test_sign_in_to_demo_app_portal_without_prompt_and_single_sign_out(keycard, demo,
                                                                        page: Page):
    page.goto(demo.url + "/")
    page.get_by_role("link", name="Sign in with Keycard").click()
    page.get_by_role("button", name="Continue as bob").click()  # the development GitHub

    expect(page).to_have_url(demo.url + "/")
    expect(page.get_by_role("heading", name="Hello, Bob Builder")).to_be_visible()
    claims = page.get_by_test_id("claims")
    expect(claims.locator('[data-claim="preferred_username"]')).to_have_text("bob")
    expect(claims.locator('[data-claim="email"]')).to_have_text("bob@acme.test")
    expect(claims.locator('[data-claim="groups"]')).to_contain_text("acme:platform")
    expect(claims.locator('[data-claim="iss"]')).to_have_text(keycard.url)

    # The portal opens without a second sign-in and lists the app.
    page.get_by_role("link", name="Open the Keycard portal").click()
    expect(page.get_by_role("heading", name="Bob Builder")).to_be_visible()
    expect(page.get_by_test_id("apps").get_by_role("link", name="Demo app")).to_be_visible()

    # Signing out of the app signs out of Keycard (RP-initiated logout with id_token_hint).
    page.goto(demo.url + "/")
    page.get_by_role("link", name="Sign out").click()
    expect(page).to_have_url(demo.url + "/")
    expect(page.get_by_role("link", name="Sign in with Keycard")).to_be_visible()
    page.goto(keycard.url + "/")
    expect(page.get_by_role("link", name="Sign in with GitHub")).to_be_visible()
