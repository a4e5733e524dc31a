"""Configuration is validated once, with messages naming the variable at fault."""

from __future__ import annotations

import logging

import pytest

from sso.config import DEFAULT_RATE_LIMITS, ConfigError, load_settings

GOOD_PRODUCTION = {
    "SSO_ENV": "production",
    "SSO_ISSUER": "https://sso.example.com",
    "SSO_SECRET_KEY": "kQ3v9-Zr_b7LmT2xW8pYc4NdHs6GfJ1aE0uRoVtKiP5yBnXq",
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


# -- issue #11 item 9: production refuses weak settings ------------------------------------


@pytest.mark.parametrize("name", ["SSO_GITHUB_URL", "SSO_GITHUB_API_URL"])
def test_finding_9_production_refuses_plain_http_github_enterprise(name):
    env = {**GOOD_PRODUCTION, "SSO_GITHUB_URL": "https://ghe.acme.com",
           "SSO_GITHUB_API_URL": "https://ghe.acme.com/api/v3"}
    env[name] = env[name].replace("https://", "http://")
    assert f"{name}=" in problems(env) and "plain http" in problems(env)
    load_settings({**env, name: env[name].replace("http://", "https://")})


@pytest.mark.parametrize("domain", ["com", "co.uk", ".co.uk", "github.io"])
def test_finding_9_production_refuses_a_public_suffix_for_forward_auth(domain):
    env = {**GOOD_PRODUCTION, "SSO_FORWARD_AUTH_DOMAINS": f"acme.com,{domain}"}
    assert "SSO_FORWARD_AUTH_DOMAINS lists" in problems(env)
    assert "public suffix" in problems(env)
    load_settings({**GOOD_PRODUCTION, "SSO_FORWARD_AUTH_DOMAINS": "acme.com,acme.co.uk"})


def test_finding_9_production_refuses_a_public_suffix_cookie_domain():
    env = {**GOOD_PRODUCTION, "SSO_ISSUER": "https://sso.acme.co.uk",
           "SSO_COOKIE_DOMAIN": "co.uk"}
    assert "SSO_COOKIE_DOMAIN='co.uk' is a public suffix" in problems(env)
    load_settings({**env, "SSO_COOKIE_DOMAIN": "acme.co.uk"})


@pytest.mark.parametrize("secret", ["x" * 48, "ab" * 24, "password" * 5])
def test_finding_9_production_refuses_a_secret_key_of_little_variety(secret):
    assert "SSO_SECRET_KEY has too little variety" in problems(
        {**GOOD_PRODUCTION, "SSO_SECRET_KEY": secret})


def test_finding_9_a_hex_secret_key_is_varied_enough():
    load_settings({**GOOD_PRODUCTION, "SSO_SECRET_KEY": "3f9a0c7be41d2865" * 2})


def test_finding_9_production_warns_about_plain_redis_to_another_host(caplog):
    settings = load_settings({**GOOD_PRODUCTION, "SSO_REDIS_URL": "redis://redis.internal:6379/0"})
    assert any("SSO_REDIS_URL uses redis://" in w and "rediss://" in w
               for w in settings.warnings)
    for url in ("rediss://redis.internal:6380/0", "redis://127.0.0.1:6379/0",
                "redis+sentinel://localhost:26379/main"):
        assert load_settings({**GOOD_PRODUCTION, "SSO_REDIS_URL": url}).warnings == ()
    assert load_settings({**GOOD_PRODUCTION, "SSO_REDIS_URL":
                          "redis+sentinel://:pw@10.0.0.5:26379,127.0.0.1:26379/m"}).warnings


def test_finding_9_the_warning_is_logged_when_the_app_starts(caplog, tmp_path):
    from sso import create_app  # noqa: PLC0415 - only this test builds an app

    env = {**GOOD_PRODUCTION, "SSO_REDIS_URL": "redis://redis.invalid:6379/0"}
    with caplog.at_level(logging.WARNING, logger="keycard.config"):
        create_app(env)
    assert any("SSO_REDIS_URL uses redis://" in r.getMessage() for r in caplog.records)


def test_finding_9_production_refuses_login_admins_when_anyone_may_sign_in():
    env = {**GOOD_PRODUCTION, "SSO_ALLOW_ANY_GITHUB_USER": "true",
           "SSO_BOOTSTRAP_ADMINS": "alice,12345"}
    assert "SSO_BOOTSTRAP_ADMINS names logins" in problems(env)
    load_settings({**env, "SSO_BOOTSTRAP_ADMINS": "12345"})
    load_settings({**env, "SSO_ALLOW_ANY_GITHUB_USER": "false"})


def test_finding_9_every_weak_setting_is_listed_at_once():
    env = {**GOOD_PRODUCTION, "SSO_SECRET_KEY": "a" * 40, "SSO_GITHUB_URL": "http://ghe.acme.com",
           "SSO_FORWARD_AUTH_DOMAINS": "com", "SSO_ALLOW_ANY_GITHUB_USER": "true",
           "SSO_BOOTSTRAP_ADMINS": "alice"}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert len(info.value.problems) == 4


def test_development_keeps_accepting_what_production_refuses():
    load_settings({"SSO_SECRET_KEY": "a" * 40, "SSO_FORWARD_AUTH_DOMAINS": "test",
                   "SSO_ALLOW_ANY_GITHUB_USER": "true", "SSO_BOOTSTRAP_ADMINS": "alice"})


def test_rate_limits_are_named_overrides_or_off():
    assert load_settings({}).rate_limits == DEFAULT_RATE_LIMITS
    assert load_settings({"SSO_RATE_LIMITS": "off"}).rate_limits == {}
    chosen = load_settings({"SSO_RATE_LIMITS": "device=5/minute, sign_in=10 per second"})
    assert chosen.rate_limits == {**DEFAULT_RATE_LIMITS, "device": "5/minute",
                                  "sign_in": "10 per second"}
    text = problems({"SSO_RATE_LIMITS": "devices=5/minute,device=lots"})
    assert "names 'devices'" in text and "'device=lots' is not a limit" in text


def test_finding_2_an_at_sign_before_digits_is_refused_not_read_as_an_id():
    assert "SSO_BOOTSTRAP_ADMINS entry '@12345' is ambiguous" in problems(
        {**GOOD_PRODUCTION, "SSO_BOOTSTRAP_ADMINS": "1001,@12345"})
    assert load_settings({**GOOD_PRODUCTION, "SSO_BOOTSTRAP_ADMINS": "1001,@alice"}
                         ).bootstrap_admins == ("1001", "alice")
