"""The employee's journey in a real browser: sign in through GitHub, portal, sign out."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import cookie


def sign_in_as(page: Page, keycard_url: str, login: str) -> None:
    page.goto(keycard_url + "/")
    page.get_by_role("link", name="Sign in with GitHub").click()
    page.get_by_role("button", name=f"Continue as {login}").click()


def test_employee_signs_in_sees_portal_and_signs_out(keycard, page: Page):
    sign_in_as(page, keycard.url, "bob")
    expect(page).to_have_url(keycard.url + "/")
    expect(page.get_by_role("heading", name="Bob Builder")).to_be_visible()
    expect(page.get_by_test_id("email")).to_have_text("bob@acme.test")  # private on the profile
    teams = page.get_by_test_id("teams-acme")
    for team in ("acme/sre", "acme/platform", "acme/engineering"):
        expect(teams).to_contain_text(team)
    session_cookie = cookie(page, "keycard_session")
    assert session_cookie and session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"

    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()

    # The old cookie, replayed, no longer signs anyone in.
    page.context.add_cookies([
        {"name": "keycard_session", "value": session_cookie["value"], "url": keycard.url}
    ])
    page.goto(keycard.url + "/")
    expect(page.get_by_role("link", name="Sign in with GitHub")).to_be_visible()


def test_unverified_email_is_never_shown_as_verified(keycard, page: Page):
    sign_in_as(page, keycard.url, "carol")
    expect(page.get_by_role("heading", name="Carol Chen")).to_be_visible()
    expect(page.get_by_text("not verified")).to_be_visible()
    expect(page.locator(".badge.ok")).to_have_count(0)


def test_outsider_sees_a_clear_refusal(keycard, page: Page):
    sign_in_as(page, keycard.url, "mallory")
    heading = page.get_by_role("heading", name="Not a member of an allowed organisation")
    expect(heading).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("mallory")
    expect(page.get_by_role("alert")).not_to_contain_text("acme")  # issue #14 item 11
    page.get_by_role("link", name="Use a different GitHub account").click()
    expect(page.get_by_role("button", name="Continue as alice")).to_be_visible()
    assert cookie(page, "keycard_session") is None


def test_login_next_returns_to_a_local_page_only(keycard, page: Page):
    page.goto(keycard.url + "/login?next=//evil.example/steal")
    page.get_by_role("button", name="Continue as alice").click()
    expect(page).to_have_url(keycard.url + "/")
