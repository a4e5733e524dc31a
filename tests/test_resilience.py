"""Redis outages give a clear 503 and the service recovers by itself; health endpoints."""

from __future__ import annotations

import pytest
import requests

from tests.support import sign_in, wait_until


def test_healthz_answers_and_readyz_reports_redis(keycard):
    assert requests.get(keycard.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(keycard.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"


def test_finding_13_readyz_tells_only_operators_why_redis_is_unavailable(make_keycard,
                                                                         private_redis):
    token = "m" * 32
    keycard = make_keycard(redis_url=private_redis.url, SSO_METRICS_TOKEN=token)
    private_redis.stop()
    for given in (None, "wrong-token-" + "x" * 20):
        headers = {"Authorization": f"Bearer {given}"} if given else {}
        anonymous = requests.get(keycard.url + "/readyz", headers=headers, timeout=10)
        assert anonymous.status_code == 503
        assert anonymous.json() == {"status": "unavailable", "redis": "unavailable"}
        assert str(private_redis.port) not in anonymous.text
    operator = requests.get(keycard.url + "/readyz", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    assert operator.status_code == 503
    assert operator.json()["detail"]  # the Redis error, for whoever runs Keycard


def test_redis_stopped_mid_run_gives_503_then_recovers(make_keycard, private_redis, http):
    keycard = make_keycard(redis_url=private_redis.url)
    sign_in(http, keycard.url, "alice")
    private_redis.stop()

    page = http.get(keycard.url + "/")
    assert page.status_code == 503
    assert "temporarily unavailable" in page.text and "Traceback" not in page.text
    assert page.headers["Retry-After"]
    api = requests.get(keycard.url + "/readyz")
    assert api.status_code == 503 and api.json()["status"] == "unavailable"
    login = requests.get(keycard.url + "/login", allow_redirects=False)
    assert login.status_code == 503
    json_error = http.get(keycard.url + "/", headers={"Accept": "application/json"})
    assert json_error.status_code == 503
    assert json_error.json()["error"] == "temporarily_unavailable"
    assert requests.get(keycard.url + "/healthz").status_code == 200  # the process lives on

    private_redis.start()  # an empty Redis: the old session is gone, sign-in works again
    wait_until(lambda: requests.get(keycard.url + "/readyz").status_code == 200, timeout=15)
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text
    assert "Alice Archer" in sign_in(http, keycard.url, "alice").text


def test_pages_carry_security_headers(keycard, http):
    page = http.get(keycard.url + "/")
    headers = page.headers
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in headers


def test_unknown_page_is_a_friendly_404_without_trace(keycard):
    page = requests.get(keycard.url + "/no/such/page")
    assert page.status_code == 404 and "Page not found" in page.text


def test_a_profile_write_during_an_outage_is_a_storage_error_not_a_crash(make_keycard,
                                                                         private_redis):
    """Accounts.save (sign-in, re-check, "apply now") turns a Redis outage into the
    503 the error handlers answer, like every other storage call."""
    from sso.accounts import Profile
    from sso.storage import StorageUnavailable

    keycard = make_keycard(redis_url=private_redis.url)
    profile = Profile("1002", "bob", None, None, False, None)
    private_redis.stop()
    with pytest.raises(StorageUnavailable):
        keycard.services.accounts.save(profile, None, signed_in=False)
