"""Issue #14 items 7 and 9-11 over HTTP: the portal's "Your sessions", team notation,
favicon, footer and skip link, and error pages in plain words. Real Keycard, development
upstream and Redis; the browsers are ``requests`` sessions."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sso.config import ConfigError, load_settings
from tests.support import csrf_token, form_with, obtain_tokens, sign_in, start_sign_in
from tests.test_useragent import FIREFOX_WINDOWS

ROOT = Path(__file__).resolve().parent.parent


def browser(user_agent: str | None = None) -> requests.Session:
    session = requests.Session()
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session


def session_rows(html: str) -> dict[str, str]:
    """The "Your sessions" rows by short id."""
    rows = re.findall(r'<li class="stack-item" data-testid="own-session-([A-Za-z0-9_-]{16})"'
                      r"(.*?)</li>", html, re.S)
    return dict(rows)


# -- item 7: your sessions ------------------------------------------------------------------


def test_item_7_portal_lists_the_persons_sessions_with_device_ip_and_this_browser(keycard):
    laptop, other = browser(), browser(FIREFOX_WINDOWS)
    sign_in(other, keycard.url, "bob")
    page = sign_in(laptop, keycard.url, "bob")
    sign_in(browser(), keycard.url, "carol")  # someone else's session is never listed
    rows = session_rows(page.text)
    assert len(rows) == 2
    mine = [row for row in rows.values() if 'data-testid="this-browser"' in row]
    assert len(mine) == 1 and 'aria-current="true"' in mine[0]
    assert "Python requests" in mine[0]  # requests' own User-Agent, in plain words
    firefox = next(row for row in rows.values() if row not in mine)
    assert "Firefox 128 on Windows" in firefox and "Mozilla/5.0" not in firefox
    assert "127.0.0.1" in firefox and "last active" in firefox
    assert list(rows.values())[0] == mine[0]  # this browser first


def test_item_7_signing_out_another_session_ends_it_and_its_tokens(keycard):
    laptop, phone = browser(), browser(FIREFOX_WINDOWS)
    client, secret = keycard.services.clients.create(name="Wiki", redirect_uris=[
        "http://127.0.0.1:9/cb"], trusted=True)
    sign_in(phone, keycard.url, "bob")
    tokens = obtain_tokens(phone, keycard.url, client.client_id, secret)
    page = sign_in(laptop, keycard.url, "bob")
    (phone_id,) = [i for i, row in session_rows(page.text).items() if "Firefox" in row]

    refused = laptop.post(f"{keycard.url}/sessions/{phone_id}/end", data={})
    assert refused.status_code == 403  # no CSRF token, no sign-out
    assert "Sign out everywhere" in phone.get(keycard.url + "/").text

    form = form_with(page.text, f"/sessions/{phone_id}/end")
    done = laptop.post(keycard.url + form.action, data=dict(form.fields))
    assert done.status_code == 200 and done.url == keycard.url + "/"
    assert "Signed out Firefox 128 on Windows (127.0.0.1)." in done.text
    assert phone_id not in session_rows(done.text)
    assert "Sign in with GitHub" in phone.get(keycard.url + "/").text
    answer = requests.post(keycard.url + "/token", auth=(client.client_id, secret), data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, timeout=10)
    assert answer.json()["error"] == "invalid_grant"  # through SessionStore: tokens ended
    events = keycard.services.audit.query(event="session.ended", limit=5)
    assert events and events[0]["details"]["session"] == phone_id

    again = laptop.post(keycard.url + form.action, data={"csrf_token": csrf_token(done.text)})
    assert "That session had already ended." in again.text


def test_item_7_nobody_can_end_another_persons_session(keycard):
    bob, carol = browser(), browser()
    sign_in(carol, keycard.url, "carol")
    carol_id = next(iter(session_rows(carol.get(keycard.url + "/").text)))
    page = sign_in(bob, keycard.url, "bob")
    answer = bob.post(f"{keycard.url}/sessions/{carol_id}/end",
                      data={"csrf_token": csrf_token(page.text)})
    assert "That session had already ended." in answer.text
    assert "Carol" in carol.get(keycard.url + "/").text


def test_item_7_signing_out_this_browser_from_the_list_signs_it_out(keycard, http):
    page = sign_in(http, keycard.url, "bob")
    (mine,) = session_rows(page.text)
    form = form_with(page.text, f"/sessions/{mine}/end")
    done = http.post(keycard.url + form.action, data=dict(form.fields))
    assert urlsplit(done.url).path == "/signed-out" and "You are signed out" in done.text
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text


def test_item_8_sign_out_everywhere_ends_with_a_message(keycard, http):
    page = sign_in(http, keycard.url, "bob")
    form = form_with(page.text, "/logout/everywhere")
    done = http.post(keycard.url + form.action, data=dict(form.fields))
    assert "You are signed out everywhere" in done.text
    assert "on every device, has ended" in done.text


# -- item 9: team notation ------------------------------------------------------------------


def test_item_9_people_read_teams_as_org_slash_team_on_portal_and_admin_pages(keycard, http):
    portal = sign_in(http, keycard.url, "alice")
    assert "acme/platform" in portal.text and "acme:platform" not in portal.text
    person = http.get(keycard.url + "/admin/people/alice").text
    assert ">acme/platform<" in person and "acme:platform" not in person
    people = http.get(keycard.url + "/admin/people").text
    assert "acme/platform" in people and "acme:platform" not in people
    # The API and the tokens keep the claim's form, as the README's token table says.
    assert "acme:platform" in keycard.services.accounts.find_by_login("alice").groups


def test_item_9_a_rule_written_in_the_token_form_is_refused_with_the_people_form(keycard, http):
    page = sign_in(http, keycard.url, "alice")
    rules = http.get(keycard.url + "/admin/rules")
    answer = http.post(keycard.url + "/admin/rules", data={
        "csrf_token": csrf_token(rules.text or page.text), "target": "acme:platform",
        "roles": "deployer"})
    assert "write a team as ORG/TEAM (&#39;acme/platform&#39;)" in answer.text


def test_item_9_an_org_without_teams_is_not_an_empty_expander(keycard, http):
    page = sign_in(http, keycard.url, "dave")  # in acme, in no team
    assert "<details" not in page.text
    assert 'data-testid="org-acme"' in page.text and "no teams" in page.text
    assert "0 teams" not in page.text


# -- item 10: favicon, GitHub mark, footer, skip link -----------------------------------------


class _Focusables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if (tag in {"a", "button", "select", "textarea", "summary"}
                or (tag == "input" and a.get("type") != "hidden")):
            if a.get("tabindex") != "-1" and (tag != "a" or "href" in a):
                self.found.append({"tag": tag, **a})


def test_item_10_favicon_is_linked_and_favicon_ico_does_not_404(keycard, http):
    page = http.get(keycard.url + "/")
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page.text
    icon = http.get(keycard.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.history[0].status_code == 301
    assert icon.headers["Content-Type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg")


def test_item_10_sign_in_button_carries_a_hidden_github_mark(keycard, http):
    page = http.get(keycard.url + "/").text
    button = re.search(r'<a class="button primary with-mark"[^>]*>(.*?)</a>', page, re.S)
    assert button and button.group(1).rstrip().endswith("Sign in with GitHub")
    assert '<svg class="mark" aria-hidden="true" focusable="false"' in button.group(1)


def test_item_10_footer_names_keycards_version(keycard, http):
    page = http.get(keycard.url + "/").text
    assert f"version {metadata.version('keycard')}" in page
    assert "Need help?" not in page  # SSO_SUPPORT_URL unset


def test_item_10_support_url_is_the_footers_need_help_link(make_keycard, http):
    keycard = make_keycard(SSO_SUPPORT_URL="mailto:it-help@example.com")
    for path in ("/", "/no-such-page"):
        page = http.get(keycard.url + path).text
        assert ('<a href="mailto:it-help@example.com" rel="noreferrer" '
                'data-testid="support">Need help?</a>') in page


@pytest.mark.parametrize("value", ["https://help.example.com/keycard",
                                   "mailto:it@example.com", "mailto:it@example.com?subject=SSO"])
def test_item_10_support_url_accepts_https_and_mailto(value, tmp_path):
    assert load_settings({"SSO_SUPPORT_URL": value}, instance_dir=tmp_path).support_url == value


@pytest.mark.parametrize("value", ["http://help.example.com", "javascript:alert(1)",
                                   "mailto:", "mailto:nobody", "https://", "help.example.com",
                                   "https://a b.example", 'mailto:"x"@example.com'])
def test_item_10_support_url_refuses_anything_else(value, tmp_path):
    with pytest.raises(ConfigError, match="SSO_SUPPORT_URL"):
        load_settings({"SSO_SUPPORT_URL": value}, instance_dir=tmp_path)


@pytest.mark.parametrize("login", [None, "alice"])
def test_item_10_skip_link_is_the_first_focusable_element(keycard, http, login):
    page = sign_in(http, keycard.url, login).text if login else http.get(keycard.url).text
    parser = _Focusables()
    parser.feed(page)
    first = parser.found[0]
    assert first["tag"] == "a" and first["href"] == "#main" and first["class"] == "skip-link"
    assert '<main id="main"' in page


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _custom_properties(block: str) -> dict[str, str]:
    return dict(re.findall(r"(--[\w-]+):\s*(#[0-9a-fA-F]{6})", block))


def test_item_10_primary_button_contrast_is_at_least_4_5_in_light_and_dark(tmp_path):
    css = (ROOT / "static" / "keycard.css").read_text()
    light = _custom_properties(css[css.index(":root {"):css.index("}", css.index(":root {"))])
    dark_start = css.index("@media (prefers-color-scheme: dark)")
    dark = {**light, **_custom_properties(css[dark_start:css.index("}\n}", dark_start)])}
    assert dark["--accent"] != light["--accent"]  # the dark block was really read
    for scheme in (light, dark):
        assert contrast(scheme["--accent"], scheme["--accent-text"]) >= 4.5, scheme


# -- item 11: error pages in plain words ----------------------------------------------------


def test_item_11_the_404_page_is_keycards_own(keycard, http):
    page = http.get(keycard.url + "/no-such-page")
    assert page.status_code == 404
    assert "Page not found" in page.text
    assert "There is no page at this address" in page.text
    assert "requested URL was not found" not in page.text
    assert 'role="alert"' not in page.text  # not a red box
    api = http.get(keycard.url + "/api/no-such-thing")
    assert api.status_code == 404 and api.json()["error"] == "not_found"


def test_item_11_a_views_own_404_words_are_kept(keycard, http):
    sign_in(http, keycard.url, "alice")
    page = http.get(keycard.url + "/admin/people/nobody-here")
    assert page.status_code == 404 and "Nobody with the login" in page.text


def test_item_11_use_a_different_github_account_opens_githubs_account_picker(keycard, http):
    page = sign_in(http, keycard.url, "mallory")
    link = re.search(r'<a class="button primary" href="([^"]+)"[^>]*>Use a different GitHub '
                     r"account</a>", page.text)
    assert link
    assert f'href="{keycard.env["SSO_GITHUB_URL"]}/logout"' in page.text  # sign out of GitHub
    upstream = http.get(keycard.url + link.group(1).replace("&amp;", "&"))
    assert "/login/oauth/authorize" in upstream.url
    assert parse_qs(urlsplit(upstream.url).query)["prompt"] == ["select_account"]
    plain = start_sign_in(browser(), keycard.url)
    assert "prompt" not in parse_qs(urlsplit(plain.url).query)


def test_item_11_end_session_opened_directly_offers_stay_signed_in(keycard, http):
    sign_in(http, keycard.url, "bob")
    page = http.get(keycard.url + "/end-session")
    assert page.status_code == 200 and "Sign out of Keycard?" in page.text
    assert '<a class="button" href="/">Stay signed in</a>' in page.text
    stay = http.get(keycard.url + "/")
    assert "Sign out everywhere" in stay.text  # still signed in
