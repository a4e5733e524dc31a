"""Issue #14 items 2 and 3 in Chromium with JavaScript off: an admin registers an app, keeps
its secret, rotates it and deletes the app through confirmation pages; a rule for a team
nobody is in is warned about next to the field before it is added."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.test_admin_journey import sign_in_as


@pytest.fixture
def no_js_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_item_2_browser_registers_rotates_and_deletes_an_app_without_javascript(
        keycard, no_js_page: Page):
    page = no_js_page
    sign_in_as(page, keycard.url, "alice")
    page.goto(keycard.url + "/admin")
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Apps").click()
    page.get_by_role("link", name="Register an app").click()
    page.get_by_label("Name", exact=True).fill("Wiki")
    page.get_by_label("Redirect URIs", exact=True).fill("https://wiki.acme.test/callback")
    page.get_by_label("Required roles").fill("staff wiki-editor")
    page.get_by_label("Back-channel logout URI").fill("https://wiki.acme.test/bcl")
    page.get_by_role("button", name="Register app").click()
    secret = page.get_by_test_id("client-secret").inner_text()
    [client] = keycard.services.clients.list()
    assert client.check_client_secret(secret) and client.required_roles == ["staff",
                                                                           "wiki-editor"]

    page.get_by_role("link", name="I have stored it").click()
    page.get_by_role("link", name="Rotate secret…").click()
    expect(page.get_by_role("heading", name="Rotate the secret of Wiki?")).to_be_visible()
    page.get_by_role("button", name="Rotate secret").click()
    new_secret = page.get_by_test_id("client-secret").inner_text()
    assert new_secret != secret
    assert keycard.services.clients.get(client.client_id).check_client_secret(new_secret)

    page.get_by_role("link", name="I have stored it").click()
    page.get_by_role("link", name="Delete app…").click()
    page.get_by_role("link", name="Cancel").click()  # cancelling keeps it
    assert keycard.services.clients.get(client.client_id) is not None
    page.get_by_role("link", name="Delete app…").click()
    page.get_by_role("button", name="Delete app").click()
    expect(page.get_by_role("status")).to_contain_text("Deleted 'Wiki'")
    assert keycard.services.clients.list() == []

    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Keys").click()
    page.get_by_role("link", name="Rotate keys…").click()
    page.get_by_role("button", name="Rotate keys").click()
    expect(page.get_by_role("status")).to_contain_text("New signing keys")
    expect(page.get_by_test_id("keys").get_by_text("retired")).to_have_count(2)


def test_item_3_browser_warns_next_to_the_field_and_adds_only_when_confirmed(
        keycard, no_js_page: Page):
    page = no_js_page
    sign_in_as(page, keycard.url, "alice")
    page.goto(keycard.url + "/admin/rules")
    target = page.get_by_label("Organisation, team or person")
    target.fill("acme/nosuchteam")
    page.get_by_label("Roles", exact=True).fill("deployer")
    page.get_by_role("button", name="Add rule").click()
    description = page.get_by_label("Organisation, team or person").get_attribute(
        "aria-describedby")
    assert description == "target-hint target-warning"
    expect(page.get_by_test_id("target-warning")).to_contain_text(
        "acme/nosuchteam matches nobody")
    assert keycard.services.rules.all() == []
    page.get_by_role("button", name="Add anyway").click()
    expect(page.get_by_role("status")).to_contain_text(
        "Rule saved: acme/nosuchteam → deployer; roles updated for 0 people now.")
