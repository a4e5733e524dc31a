"""Configuration is validated once, with messages naming the variable at fault."""

from __future__ import annotations

import pytest

from sso.config import ConfigError, load_settings

GOOD_PRODUCTION = {
    "SSO_ENV": "production",
    "SSO_ISSUER": "https://sso.example.com",
    "SSO_SECRET_KEY": "x" * 48,
    "SSO_GITHUB_CLIENT_ID": "Iv1.abc",
    "SSO_GITHUB_CLIENT_SECRET": "s3cret",
    "SSO_GITHUB_ORGS": "acme",
}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value)


def test_a_safe_production_configuration_loads():
    settings = load_settings(GOOD_PRODUCTION)
    assert settings.is_production and settings.secure_cookies
    assert settings.github_orgs == ("acme",)


def test_production_refuses_a_missing_secret_key():
    env = {k: v for k, v in GOOD_PRODUCTION.items() if k != "SSO_SECRET_KEY"}
    assert "SSO_SECRET_KEY is missing" in problems(env)


def test_production_refuses_plain_http_issuer_on_a_public_host():
    message = problems({**GOOD_PRODUCTION, "SSO_ISSUER": "http://sso.example.com"})
    assert "SSO_ISSUER" in message and "https" in message


def test_plain_http_issuer_on_a_public_host_is_refused_in_development_too():
    message = problems({"SSO_ISSUER": "http://sso.example.com", "SSO_SECRET_KEY": "z" * 40})
    assert "SSO_ISSUER" in message and "https" in message


def test_production_allows_plain_http_on_loopback():
    assert load_settings({**GOOD_PRODUCTION, "SSO_ISSUER": "http://127.0.0.1:5000"})


def test_production_refuses_the_development_upstream():
    message = problems({**GOOD_PRODUCTION, "SSO_GITHUB_CLIENT_ID": "keycard-dev"})
    assert "development upstream" in message
    message = problems({**GOOD_PRODUCTION, "SSO_GITHUB_URL": "http://127.0.0.1:5001"})
    assert "SSO_GITHUB_URL" in message


def test_every_problem_is_reported_at_once():
    message = problems({"SSO_ENV": "production", "SSO_ISSUER": "http://sso.example.com",
                        "SSO_MEMBERSHIP_MAX_AGE": "soon"})
    for name in ("SSO_SECRET_KEY", "SSO_ISSUER", "SSO_GITHUB_CLIENT_ID", "SSO_MEMBERSHIP_MAX_AGE"):
        assert name in message


def test_unknown_env_and_bad_booleans_are_named():
    message = problems({"SSO_ENV": "staging", "SSO_ALLOW_ANY_GITHUB_USER": "maybe"})
    assert "SSO_ENV" in message and "SSO_ALLOW_ANY_GITHUB_USER" in message


def test_cookie_domain_must_contain_the_issuer():
    message = problems({"SSO_ISSUER": "https://sso.acme.test", "SSO_COOKIE_DOMAIN": "evil.test",
                        "SSO_SECRET_KEY": "y" * 40})
    assert "SSO_COOKIE_DOMAIN" in message
    settings = load_settings({"SSO_ISSUER": "https://sso.acme.test", "SSO_SECRET_KEY": "y" * 40,
                              "SSO_COOKIE_DOMAIN": ".acme.test"})
    assert settings.cookie_domain == "acme.test"


def test_development_generates_and_keeps_a_secret_key(tmp_path):
    first = load_settings({}, instance_dir=tmp_path)
    second = load_settings({}, instance_dir=tmp_path)
    assert len(first.secret_key) >= 48 and first.secret_key == second.secret_key
    assert oct((tmp_path / "dev-secret-key").stat().st_mode & 0o777) == "0o600"


def test_a_metrics_token_must_be_long_enough_to_be_a_secret():
    assert "SSO_METRICS_TOKEN" in problems({**GOOD_PRODUCTION, "SSO_METRICS_TOKEN": "short"})
    settings = load_settings({**GOOD_PRODUCTION, "SSO_METRICS_TOKEN": "m" * 32})
    assert settings.metrics_token == "m" * 32
    assert load_settings(GOOD_PRODUCTION).metrics_token is None


def test_the_device_poll_interval_defaults_to_the_rfc_and_must_be_positive():
    assert load_settings(GOOD_PRODUCTION).device_poll_interval == 5  # RFC 8628 §3.2
    assert load_settings({**GOOD_PRODUCTION,
                          "SSO_DEVICE_POLL_INTERVAL": "1"}).device_poll_interval == 1
    for bad in ("0", "-3", "soon"):
        assert "SSO_DEVICE_POLL_INTERVAL" in problems(
            {**GOOD_PRODUCTION, "SSO_DEVICE_POLL_INTERVAL": bad})


def test_trusted_proxy_hops_default_to_none_and_must_be_a_whole_number():
    assert load_settings(GOOD_PRODUCTION).trusted_proxy_hops == 0
    assert load_settings({**GOOD_PRODUCTION,
                          "SSO_TRUSTED_PROXY_HOPS": "2"}).trusted_proxy_hops == 2
    for bad in ("-1", "one", "1.5"):
        assert "SSO_TRUSTED_PROXY_HOPS" in problems(
            {**GOOD_PRODUCTION, "SSO_TRUSTED_PROXY_HOPS": bad})
