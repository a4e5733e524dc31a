"""Acceptance: an admin maps a team to a role, the member sees it, the admin signs them out.

Two Chromium contexts (two people's browsers) against a real Keycard, the development
upstream and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect


def sign_in_as(page: Page, keycard_url: str, login: str) -> None:
    page.goto(keycard_url + "/")
    page.get_by_role("link", name="Sign in with GitHub").click()
    page.get_by_role("button", name=f"Continue as {login}").click()
    expect(page.get_by_test_id("login")).to_have_text(login)


@pytest.fixture
def second_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_admin_maps_a_team_to_a_role_and_ends_a_members_sessions(keycard, page: Page,
                                                                   second_page: Page):
    alice, bob = page, second_page
    sign_in_as(alice, keycard.url, "alice")
    alice.get_by_role("link", name="Admin").click()
    expect(alice).to_have_url(keycard.url + "/admin/rules")
    alice.get_by_label("Organisation, team or person").fill("acme/platform")
    alice.get_by_label("Roles").fill("deployer")
    alice.get_by_role("button", name="Add rule").click()
    expect(alice.get_by_role("status")).to_contain_text("Rule saved: acme/platform → deployer")
    expect(alice.get_by_test_id("rule-acme/platform")).to_contain_text("deployer")

    # bob is in acme/sre, a child of acme/platform: the rule reaches him at sign-in.
    sign_in_as(bob, keycard.url, "bob")
    expect(bob.get_by_test_id("roles")).to_contain_text("deployer")

    alice.get_by_role("navigation", name="Admin").get_by_role("link", name="People").click()
    alice.get_by_test_id("person-bob").get_by_role("link", name="bob").click()
    expect(alice.get_by_test_id("role-deployer")).to_contain_text("team rule acme/platform")
    expect(alice.get_by_test_id("sessions").locator("tbody tr")).to_have_count(1)
    alice.get_by_role("button", name="End all sessions").click()
    # A confirmation step (issue #14 item 4), then the same button name sends it.
    expect(alice.get_by_role("heading", level=1)).to_have_text("End the 1 session of @bob?")
    alice.get_by_role("button", name="End all sessions").click()
    expect(alice.get_by_role("status")).to_contain_text("Ended 1 session of @bob.")
    expect(alice.get_by_test_id("no-sessions")).to_be_visible()

    bob.reload()
    expect(bob.get_by_role("link", name="Sign in with GitHub")).to_be_visible()

    alice.get_by_role("navigation", name="Admin").get_by_role("link", name="Audit log").click()
    rule_change = alice.get_by_test_id("event-rules.changed")
    expect(rule_change).to_contain_text("alice")
    expect(rule_change).to_contain_text("acme/platform")
    expect(alice.get_by_test_id("event-sessions.ended")).to_contain_text("bob")
