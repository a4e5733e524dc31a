"""Issue #14 item 8 on the portal's "Apps you allowed": the consent screen's own words, the
date of the consent, and a message after revoking. Real Keycard, upstream and Redis."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from html import unescape

from tests.oidc.conftest import approve, authorize, redeem, refresh, sent_back
from tests.support import csrf_token, form_with


def _rows(html: str, client_id: str) -> str:
    match = re.search(rf'data-testid="consent-{re.escape(client_id)}">(.*?)</form>', html, re.S)
    assert match, "no row for the app"
    return match.group(1)


def test_item_8_apps_you_allowed_shows_the_consent_screens_words_and_the_date(
    bob, keycard, make_client
):
    app = make_client(trusted=False, name="Wiki")
    page = authorize(bob, app, scope="openid email groups")
    screen = re.search(r'data-testid="consent-scopes">(.*?)</ul>', page.text, re.S)
    assert screen
    words = [unescape(w) for w in re.findall(r"<li>(.*?)</li>", screen.group(1))]
    assert len(words) == 3
    assert approve(bob, page).status_code == 303
    today = datetime.fromtimestamp(time.time(), UTC)

    row = _rows(bob.get(keycard.url + "/").text, app.client_id)
    shown = [unescape(w) for w in re.findall(r"<li>(.*?)</li>", row)]
    assert shown == words  # the same plain words, in the same order
    assert "openid" not in row and "groups," not in row
    assert f"{today.day} {today:%B %Y}" in row  # the day the consent was given


def test_item_8_revoking_an_app_ends_its_tokens_and_says_so(bob, keycard, make_client):
    app = make_client(trusted=False, name="Wiki")
    page = authorize(bob, app, scope="openid offline_access")
    answer = approve(bob, page)
    tokens = redeem(app, sent_back(answer)["code"], page.code_verifier).json()
    portal = bob.get(keycard.url + "/")
    form = form_with(portal.text, f"/consents/{app.client_id}/revoke")
    done = bob.post(keycard.url + form.action, data=dict(form.fields))
    assert done.status_code == 200 and done.url == keycard.url + "/"
    assert ('role="status" data-testid="notice">Wiki no longer has access to your account'
            in done.text)
    assert f"consent-{app.client_id}" not in done.text
    assert refresh(app, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    again = bob.post(keycard.url + form.action, data={"csrf_token": csrf_token(done.text)})
    assert "Wiki had no access to withdraw." in again.text
