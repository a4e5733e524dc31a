from tests.support import sign_in


def test_sign_in_lands_on_portal(keycard, http):
    page = sign_in(http, keycard.url, "bob")
    assert page.status_code == 200, page.text[:2000]
    assert "Bob Builder" in page.text
    assert "bob@acme.test" in page.text
