"""Issue #14 items 7, 10 and 11 in Chromium: the sessions list with per-session sign-out,
the skip link, the favicon, and the primary button's contrast read from computed colours."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.test_signin_journey import sign_in_as
from tests.test_portal import contrast
from tests.test_useragent import FIREFOX_WINDOWS


@pytest.fixture(params=["light", "dark"])
def scheme_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(color_scheme=request.param)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def _hex(css_colour: str) -> str:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def test_item_10_primary_button_contrast_in_the_browser(keycard, scheme_page: Page):
    scheme_page.goto(keycard.url + "/")
    button = scheme_page.get_by_role("link", name="Sign in with GitHub")
    colours = button.evaluate(
        "e => { const s = getComputedStyle(e); return [s.color, s.backgroundColor]; }")
    ratio = contrast(_hex(colours[0]), _hex(colours[1]))
    assert ratio >= 4.5, (colours, ratio)
    mark = button.locator("svg")
    expect(mark).to_have_attribute("aria-hidden", "true")
    assert mark.bounding_box()["width"] > 0  # drawn, beside the words


def test_item_10_skip_link_is_the_first_tab_stop_and_reaches_main(keycard, page: Page):
    sign_in_as(page, keycard.url, "alice")
    expect(page.get_by_role("heading", name="Alice Archer")).to_be_visible()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    box = skip.bounding_box()
    assert box and box["y"] >= 0  # shown on focus, not left off-screen
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_item_10_no_page_request_fails_favicon_included(keycard, page: Page):
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(keycard.url + "/")
    page.goto(keycard.url + "/favicon.ico")
    assert failed == []


def test_item_7_sign_out_another_session_from_the_list(keycard, browser: Browser, page: Page):
    phone = browser.new_context(user_agent=FIREFOX_WINDOWS)
    try:
        other = phone.new_page()
        sign_in_as(other, keycard.url, "bob")
        sign_in_as(page, keycard.url, "bob")
        sessions = page.get_by_test_id("own-sessions")
        expect(sessions.locator("> li")).to_have_count(2)
        expect(page.get_by_test_id("this-browser")).to_have_count(1)
        page.get_by_role("button", name="Sign out Firefox 128 on Windows").click()
        expect(page.get_by_role("status")).to_have_text(
            "Signed out Firefox 128 on Windows (127.0.0.1).")
        expect(sessions.locator("> li")).to_have_count(1)
        other.reload()
        expect(other.get_by_role("link", name="Sign in with GitHub")).to_be_visible()
    finally:
        phone.close()


def test_item_11_cancelled_sign_in_offers_try_again(keycard, page: Page):
    page.goto(keycard.url + "/")
    page.get_by_role("link", name="Sign in with GitHub").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name="Sign-in cancelled")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    page.get_by_role("link", name="Try again").click()
    page.get_by_role("button", name="Continue as bob").click()
    expect(page.get_by_role("heading", name="Bob Builder")).to_be_visible()
