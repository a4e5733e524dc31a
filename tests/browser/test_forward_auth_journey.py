"""Forward auth in Chromium: an app behind a real nginx (``auth_request``) sends an
unauthenticated browser through Keycard's sign-in and gets it back, signed in.

The stack (Keycard, nginx, the echoing app) is the acceptance test's fixture."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.test_forward_auth_nginx import Stack, stack  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser


def test_browser_signs_in_through_nginx_and_comes_back(stack: Stack, page: Page):  # noqa: F811
    protected = stack.app + "/private/report?x=1&y=2"
    page.goto(protected)
    page.get_by_role("button", name="Continue as bob").click()
    expect(page).to_have_url(protected)
    expect(page.locator("body")).to_contain_text('"X-Auth-Request-User": "bob"')
    expect(page.locator("body")).to_contain_text('"X-Auth-Request-Email": "bob@acme.test"')

    # Signed in now: the next protected page opens without another prompt...
    page.goto(stack.app + "/other")
    expect(page.locator("body")).to_contain_text('"path": "/other"')

    # ...but the admin location needs a role bob does not hold.
    response = page.goto(stack.app + "/admin/")
    assert response is not None and response.status == 403

    # A return address outside SSO_FORWARD_AUTH_DOMAINS is refused, never followed.
    response = page.goto(stack.issuer + "/auth/start?rd=http://evil.test/")
    assert response is not None and response.status == 400
    expect(page.get_by_role("alert")).to_contain_text("This return address is not allowed")
    assert page.url.startswith(stack.issuer)

    # Signing out at Keycard ends access to the app too.
    page.goto(stack.issuer + "/")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    page.goto(protected)
    expect(page.get_by_role("button", name="Continue as bob")).to_be_visible()
