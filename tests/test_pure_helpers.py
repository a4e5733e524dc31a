"""Direct unit tests of the pure functions behind the redirect and code checks: no
server, no Redis. The journeys over HTTP that use them are in test_signin_flow.py,
test_forward_auth*.py, oidc/test_authorize_endpoint.py and oidc/test_device_grant.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sso.oidc.clients import Client, ClientError, check_uri
from sso.oidc.device_records import (
    USER_CODE_ALPHABET,
    USER_CODE_LENGTH,
    format_user_code,
    new_user_code,
    normalise_user_code,
)
from sso.web.redirects import safe_next, safe_return_url

# -- safe_next: where /login may send the browser back to -----------------------------------


@pytest.mark.parametrize("value", ["/", "/admin", "/device?user_code=BCDF-GHJK",
                                   "/a/b?c=d#e", "/%2F%2Fevil.example"])
def test_safe_next_keeps_same_site_paths(value: str):
    assert safe_next(value) == value


@pytest.mark.parametrize("value", [
    None, "", "admin", "//evil.example", "//evil.example/path", "/\\evil.example",
    "https://evil.example/", "http:/evil.example", "javascript:alert(1)",
    "/path\\with\\backslashes", "/new\nline", "/tab\there", "/nul\x00", "\t/admin",
])
def test_safe_next_refuses_everything_else(value: str | None):
    assert safe_next(value) == "/"
    assert safe_next(value, default="/portal") == "/portal"


@given(st.text(max_size=60))
def test_safe_next_answers_a_path_on_this_site_whatever_it_is_given(value: str):
    result = safe_next(value, default="/fallback")
    assert result in (value, "/fallback")
    assert result.startswith("/") and not result.startswith(("//", "/\\"))
    assert "\\" not in result and not any(ord(c) < 0x20 for c in result)


# -- safe_return_url: forward auth's return address (rd=) -----------------------------------

ALLOWED = ("acme.test",)


@pytest.mark.parametrize("url", [
    "https://acme.test/", "https://wiki.acme.test/page?x=1", "http://a.b.acme.test:8080/x",
    "HTTPS://Wiki.ACME.test/", "https://wiki.acme.test",
])
def test_safe_return_url_accepts_allowed_domains_and_their_subdomains(url: str):
    assert safe_return_url(url, ALLOWED) == url


@pytest.mark.parametrize("url", [
    None, "", "/relative", "//wiki.acme.test/", "ftp://wiki.acme.test/",
    "javascript://wiki.acme.test/%0aalert(1)", "https://evil-acme.test/",
    "https://acme.test.evil.example/", "https://wiki.acme.test@evil.example/",
    "https://evil.example\\@wiki.acme.test/", "https://wiki.acme.test./",
    "https://wiki%2eacme.test/", "https://wiki.acme.test:99999/", "https://wiki.acme.test:x/",
    "https:/wiki.acme.test/", "https://wiki.acme.test/a b", "https://wiki.acme.test/\x7f",
    "https://xn--80ak6aa92e.com/", "https://wiki.acme.test/" + "a" * 4096,
    "https://[::1]/",
])
def test_safe_return_url_refuses_other_hosts_and_ambiguous_urls(url: str | None):
    assert safe_return_url(url, ALLOWED) is None


def test_safe_return_url_needs_an_allowed_domain():
    assert safe_return_url("https://wiki.acme.test/", ()) is None
    assert safe_return_url("https://wiki.acme.test/", ("", ".")) is None
    assert safe_return_url("https://wiki.acme.test/", (".ACME.test.",)) == (
        "https://wiki.acme.test/")
    assert safe_return_url("https://wiki.acme.test/", ("other.test", "acme.test")) == (
        "https://wiki.acme.test/")


# -- redirect URIs of registered clients ----------------------------------------------------

CALLBACK = "https://app.example.com/callback"


def test_registered_redirect_uris_match_byte_for_byte_only():
    client = Client(client_id="c", name="App", secret_hash="h",
                    redirect_uris=[CALLBACK, "http://127.0.0.1:8765/cb"],
                    post_logout_redirect_uris=["https://app.example.com/bye"])
    assert client.check_redirect_uri(CALLBACK)
    assert client.check_redirect_uri("http://127.0.0.1:8765/cb")
    for other in (CALLBACK + "/", CALLBACK.upper(), "http://127.0.0.1:8766/cb",
                  "http://localhost:8765/cb", "", None, 1):
        assert not client.check_redirect_uri(other)  # type: ignore[arg-type]
    assert client.check_post_logout_redirect_uri("https://app.example.com/bye")
    assert not client.check_post_logout_redirect_uri(CALLBACK)
    assert not client.check_post_logout_redirect_uri(None)  # type: ignore[arg-type]
    assert client.get_default_redirect_uri() is None


@pytest.mark.parametrize("uri", [
    CALLBACK, "https://app.example.com/cb?tenant=a", "http://127.0.0.1/cb",
    "http://127.9.9.9:1/cb", "http://[::1]:9000/cb", "http://localhost:3000/cb",
])
def test_check_uri_returns_acceptable_uris_unchanged(uri: str):
    assert check_uri(uri) == uri


@pytest.mark.parametrize(("uri", "reason"), [
    ("", "must not be empty"),
    ("https://app.example.com/c b", "whitespace"),
    ("https://app.example.com/cb\x00", "control"),
    ("https://*.example.com/cb", "wildcards"),
    ("https://app.example.com/cb#x", "fragment"),
    ("https://user@app.example.com/cb", "userinfo"),
    ("https://app.example.com:99999/cb", "invalid host or port"),
    ("https:///cb", "absolute URI with a host"),
    ("http://app.example.com/cb", "loopback"),
    ("http://localhost.evil.example/cb", "loopback"),
    ("com.example.app:/cb", "absolute URI with a host"),
    ("ftp://app.example.com/cb", "must use https://"),
])
def test_check_uri_names_the_problem(uri: str, reason: str):
    with pytest.raises(ClientError, match=reason):
        check_uri(uri)
    with pytest.raises(ClientError, match="post-logout URI"):
        check_uri(uri, "post-logout URI")


# -- user codes (RFC 8628 §6.1) -------------------------------------------------------------


@given(st.text(alphabet=USER_CODE_ALPHABET, min_size=USER_CODE_LENGTH,
               max_size=USER_CODE_LENGTH), st.sampled_from(["", " ", "\t"]),
       st.booleans())
def test_any_way_of_typing_a_code_normalises_to_the_stored_form(code: str, pad: str,
                                                                lower: bool):
    typed = format_user_code(code)
    typed = typed.lower() if lower else typed
    assert normalise_user_code(f"{pad}{typed}{pad}") == code
    assert normalise_user_code(typed.replace("-", " ")) == code
    assert normalise_user_code(code) == code


@given(st.text(max_size=12))
def test_normalised_codes_are_always_well_formed(text: str):
    result = normalise_user_code(text)
    assert result is None or (len(result) == USER_CODE_LENGTH
                              and set(result) <= set(USER_CODE_ALPHABET))


def test_new_codes_round_trip_through_normalisation():
    for _ in range(100):
        code = new_user_code()
        assert format_user_code(normalise_user_code(code) or "") == code
