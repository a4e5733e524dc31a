"""Settings read once from ``SSO_*`` environment variables and validated up front.

Every problem is collected and reported together, each naming the variable and
what to do, so an operator fixes a bad deployment in one pass.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import limits
from publicsuffixlist import PublicSuffixList

#: The OAuth client id the development upstream hands out; production refuses it.
DEV_UPSTREAM_CLIENT_ID = "keycard-dev"
DEV_UPSTREAM_CLIENT_SECRET = "keycard-dev-secret"  # noqa: S105 - a public demo value


#: Request limits (the ``limits`` package's notation), per client IP unless said otherwise.
#: Generous enough for a whole company behind one NAT address; ``SSO_RATE_LIMITS``
#: overrides them by name, or turns them all off.
DEFAULT_RATE_LIMITS: dict[str, str] = {
    # /login, /authorize and /auth/github/callback, each endpoint counted on its own.
    "sign_in": "1000/minute",
    # /device_authorization, per client IP and per client_id: a device tombstone lives 70 min.
    "device": "120/minute",
    # failed client authentications (/token, /introspect, /revoke, /device_authorization),
    # per client IP and per client_id.
    "client_auth_failures": "60/minute",
}


class ConfigError(Exception):
    """Raised with every configuration problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Keycard cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Settings:
    """Validated configuration; build it with :func:`load_settings`."""

    env: str = "development"
    issuer: str = "http://127.0.0.1:5000"
    secret_key: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "keycard:"
    # Replicas that must hold a revocation or an ended session before it counts as done
    # (WAIT): 1 with redis+sentinel:// unless set, else 0 (see Store.confirmed).
    redis_wait_replicas: int = 0
    github_url: str = "https://github.com"
    github_api_url: str = "https://api.github.com"
    github_client_id: str = ""
    github_client_secret: str = ""
    github_orgs: tuple[str, ...] = ()
    allow_any_github_user: bool = False
    bootstrap_admins: tuple[str, ...] = ()
    membership_max_age: int = 3600
    # Longest a profile may go without a successful re-check (GitHub failing) before the
    # person's access ends: fail closed. 4 × membership_max_age unless set.
    membership_max_stale: int = 4 * 3600
    cookie_domain: str | None = None
    forward_auth_domains: tuple[str, ...] = ()
    session_idle_seconds: int = 8 * 3600
    session_absolute_seconds: int = 7 * 24 * 3600
    login_state_seconds: int = 600
    upstream_timeout: float = 10.0
    audit_max_events: int = 100_000
    # People whose last sign-in is older are forgotten (sso/forgetting.py); 0: never.
    forget_after_days: int = 400
    # A log line repeated by every request (a Redis outage): at most one per this many
    # seconds per kind and process, with the count of lines suppressed.
    log_repeat_seconds: int = 10
    metrics_token: str | None = None  # when set, /metrics wants it as a bearer token
    # Shared secret of the GitHub organisation webhook (POST /hooks/github); None: no endpoint.
    github_webhook_secret: str | None = None
    device_poll_interval: int = 5  # RFC 8628 §3.2 default; seconds between device polls
    trusted_proxy_hops: int = 0  # proxies whose X-Forwarded-For/-Proto/-Host are believed
    # "Need help?" in every page's footer: an https:// page or a mailto: address; None: no link.
    support_url: str | None = None
    # name -> limit (see DEFAULT_RATE_LIMITS); empty when SSO_RATE_LIMITS=off
    rate_limits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # Weak but allowed choices, logged at start (create_app) so operators see them.
    warnings: tuple[str, ...] = ()

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https://")

    @property
    def uses_dev_upstream(self) -> bool:
        return self.github_client_id == DEV_UPSTREAM_CLIENT_ID


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(name: str, value: str, problems: list[str]) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    problems.append(f"{name}={value!r} is not a boolean: use true or false.")
    return False


def _int(name: str, value: str | None, default: int, problems: list[str]) -> int:
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        problems.append(f"{name}={value!r} is not a whole number of seconds.")
        return default
    if number <= 0:
        problems.append(f"{name} must be positive (got {number}).")
        return default
    return number


def _count(name: str, value: str | None, problems: list[str], *, default: int = 0) -> int:
    """A whole number ≥ 0 (unset: ``default``)."""
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        problems.append(f"{name}={value!r} is not a whole number.")
        return 0
    if number < 0:
        problems.append(f"{name} must be 0 or more (got {number}).")
        return 0
    return number


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(name: str, value: str, problems: list[str]) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        problems.append(f"{name}={value!r} must be an absolute http(s) URL.")
    elif parts.query or parts.fragment:
        problems.append(f"{name}={value!r} must not carry a query or fragment.")


def _rate_limits(value: str, problems: list[str]) -> dict[str, str]:
    """``off``, or ``name=limit`` pairs overriding :data:`DEFAULT_RATE_LIMITS`."""
    chosen = dict(DEFAULT_RATE_LIMITS)
    if value.strip().lower() in {"off", "false", "0", "none"}:
        return {}
    for item in _split(value):
        name, _, limit = item.partition("=")
        name = name.strip()
        if name not in DEFAULT_RATE_LIMITS:
            problems.append(f"SSO_RATE_LIMITS names {name!r}: use "
                            f"{', '.join(DEFAULT_RATE_LIMITS)} (or set it to off).")
            continue
        try:
            limits.parse(limit.strip())
        except ValueError:
            problems.append(f"SSO_RATE_LIMITS: {item!r} is not a limit like "
                            f"{name}=100/minute.")
            continue
        chosen[name] = limit.strip()
    return chosen


_SUFFIXES: PublicSuffixList | None = None


def is_public_suffix(domain: str) -> bool:
    """``com``, ``co.uk``, ``github.io``: a domain anyone can register names under.

    The Public Suffix List bundled with the ``publicsuffixlist`` package (offline; the
    package's releases track the list), loaded on first use.
    """
    global _SUFFIXES
    if _SUFFIXES is None:
        _SUFFIXES = PublicSuffixList()
    return bool(_SUFFIXES.is_public(domain.lower().strip(".")))


def _low_variety(secret: str) -> bool:
    # A random 32-character key has well over 16 distinct characters (hex ~14); fewer
    # than 8 means a repeated character or word ("aaaa...", "passwordpassword...").
    return len(set(secret)) < 8


def _redis_hosts(url: str) -> list[str | None]:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme == "unix":
        return []
    hosts = []
    for item in netloc.split(","):
        try:
            hosts.append(urlsplit(f"//{item}").hostname)
        except ValueError:
            hosts.append(item)
    return hosts


def _production_hardening(*, secret_key: str, github_urls: list[str],
                          cookie_domain: str | None, forward_auth_domains: tuple[str, ...],
                          redis_url: str, allow_any: bool, bootstrap_admins: tuple[str, ...],
                          problems: list[str], warnings: list[str]) -> None:
    """Weak settings production refuses (or warns about), beyond the basic checks."""
    if secret_key and _low_variety(secret_key):
        problems.append("SSO_SECRET_KEY has too little variety (a repeated character or "
                        "word): use a random value (python -c 'import secrets; "
                        "print(secrets.token_urlsafe(48))').")
    for name, url in zip(("SSO_GITHUB_URL", "SSO_GITHUB_API_URL"), github_urls, strict=True):
        host = urlsplit(url).hostname
        if url.startswith("http://") and not is_loopback_host(host):
            problems.append(f"{name}={url!r} uses plain http: the upstream's tokens and "
                            "people's profiles would travel in clear; use https.")
    if cookie_domain and is_public_suffix(cookie_domain):
        problems.append(f"SSO_COOKIE_DOMAIN={cookie_domain!r} is a public suffix: the "
                        "session cookie would go to every site under it; use your own domain.")
    for domain in forward_auth_domains:
        if is_public_suffix(domain):
            problems.append(f"SSO_FORWARD_AUTH_DOMAINS lists {domain!r}, a public suffix: "
                            "forward auth would send browsers back to anyone's site under it.")
    if allow_any and any(not a.isdigit() for a in bootstrap_admins):
        problems.append("SSO_BOOTSTRAP_ADMINS names logins while SSO_ALLOW_ANY_GITHUB_USER="
                        "true: whoever signs in first with such a login (a renamed or "
                        "unclaimed one) becomes admin; list numeric GitHub user ids instead.")
    scheme = urlsplit(redis_url).scheme
    if scheme in {"redis", "redis+sentinel", "redis+cluster"} and any(
        not is_loopback_host(h) for h in _redis_hosts(redis_url)
    ):
        warnings.append(f"SSO_REDIS_URL uses {scheme}:// (no TLS) to a host that is not "
                        "loopback: sessions, tokens and sealed secrets cross the network "
                        "in clear; prefer rediss:// (or a private, trusted link).")


def dev_secret_key(instance_dir: Path) -> str:
    """A development secret that survives restarts, so encrypted data stays readable."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    path = instance_dir / "dev-secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _support_url(value: str, problems: list[str]) -> str | None:
    """The footer's help link goes on every page, sign-in and error pages included: only a
    secure page or a mail address, never javascript: or a page that could be tampered with."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.netloc and not any(c.isspace() for c in value):
        return value
    address = value.removeprefix("mailto:")
    if (value.startswith("mailto:") and "@" in address.split("?", 1)[0]
            and not any(c.isspace() or c in "<>\"" for c in address)):
        return value
    problems.append(f"SSO_SUPPORT_URL={value!r} must be an https:// address or "
                    "mailto:someone@example.com.")
    return None


def load_settings(
    environ: Mapping[str, str] | None = None, *, instance_dir: Path | None = None
) -> Settings:
    """Read and validate settings; raise :class:`ConfigError` listing every problem."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    mode = env.get("SSO_ENV", "development").strip() or "development"
    if mode not in {"development", "production"}:
        problems.append(f"SSO_ENV={mode!r} must be 'development' or 'production'.")
    production = mode == "production"

    issuer = env.get("SSO_ISSUER", "").strip().rstrip("/")
    if not issuer:
        if production:
            problems.append("SSO_ISSUER is required in production: set the public https URL.")
        issuer = "http://127.0.0.1:5000"
    _check_url("SSO_ISSUER", issuer, problems)
    issuer_host = urlsplit(issuer).hostname
    if issuer.startswith("http://") and not is_loopback_host(issuer_host):
        # OAuth (RFC 8414 §2, OIDC Discovery) allows plain http only for loopback issuers.
        problems.append(
            f"SSO_ISSUER={issuer!r} uses plain http on a non-loopback host; use https "
            "(cookies and tokens must not travel in clear), or 127.0.0.1/localhost to develop."
        )

    secret_key = env.get("SSO_SECRET_KEY", "")
    if production and not secret_key:
        problems.append(
            "SSO_SECRET_KEY is missing: production needs a long random value "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    elif secret_key and len(secret_key) < 32:
        problems.append("SSO_SECRET_KEY is too short: use at least 32 random characters.")
    if not secret_key and not production:
        secret_key = dev_secret_key(instance_dir or Path.cwd() / "instance")

    github_url = env.get("SSO_GITHUB_URL", "https://github.com").strip().rstrip("/")
    github_api_url = env.get("SSO_GITHUB_API_URL", "https://api.github.com").strip().rstrip("/")
    _check_url("SSO_GITHUB_URL", github_url, problems)
    _check_url("SSO_GITHUB_API_URL", github_api_url, problems)
    client_id = env.get("SSO_GITHUB_CLIENT_ID", "").strip()
    client_secret = env.get("SSO_GITHUB_CLIENT_SECRET", "").strip()
    if production:
        if not client_id or not client_secret:
            problems.append(
                "SSO_GITHUB_CLIENT_ID and SSO_GITHUB_CLIENT_SECRET are required in production "
                "(register an OAuth app on GitHub; see the README)."
            )
        if client_id == DEV_UPSTREAM_CLIENT_ID or any(
            is_loopback_host(urlsplit(u).hostname) for u in (github_url, github_api_url)
        ):
            problems.append(
                "SSO_GITHUB_URL / SSO_GITHUB_CLIENT_ID point at the development upstream; "
                "production must use github.com or your GitHub Enterprise Server."
            )

    allow_any = _bool(
        "SSO_ALLOW_ANY_GITHUB_USER", env.get("SSO_ALLOW_ANY_GITHUB_USER", ""), problems
    )
    orgs = tuple(o.lower() for o in _split(env.get("SSO_GITHUB_ORGS", "")))

    cookie_domain = env.get("SSO_COOKIE_DOMAIN", "").strip().lstrip(".") or None
    if cookie_domain and issuer_host and not (
        issuer_host == cookie_domain or issuer_host.endswith("." + cookie_domain)
    ):
        problems.append(
            f"SSO_COOKIE_DOMAIN={cookie_domain!r} must be the issuer's host "
            f"({issuer_host}) or a parent domain of it."
        )

    idle = _int("SSO_SESSION_IDLE_SECONDS", env.get("SSO_SESSION_IDLE_SECONDS"), 8 * 3600, problems)
    absolute = _int(
        "SSO_SESSION_MAX_SECONDS", env.get("SSO_SESSION_MAX_SECONDS"), 7 * 24 * 3600, problems
    )
    if idle > absolute:
        problems.append("SSO_SESSION_IDLE_SECONDS cannot exceed SSO_SESSION_MAX_SECONDS.")

    prefix = env.get("SSO_REDIS_PREFIX", "keycard:")
    if not prefix or any(c.isspace() for c in prefix):
        problems.append("SSO_REDIS_PREFIX must be non-empty and contain no spaces.")

    max_age = _int("SSO_MEMBERSHIP_MAX_AGE", env.get("SSO_MEMBERSHIP_MAX_AGE"), 3600, problems)
    max_stale = _int("SSO_MEMBERSHIP_MAX_STALE", env.get("SSO_MEMBERSHIP_MAX_STALE"),
                     4 * max_age, problems)
    if max_stale < max_age:
        problems.append(
            f"SSO_MEMBERSHIP_MAX_STALE={max_stale} is shorter than SSO_MEMBERSHIP_MAX_AGE="
            f"{max_age}: a profile must be allowed at least one re-check period."
        )

    timeout_raw = env.get("SSO_GITHUB_TIMEOUT", "10")
    try:
        upstream_timeout = float(timeout_raw)
        if upstream_timeout <= 0:
            raise ValueError
    except ValueError:
        problems.append(f"SSO_GITHUB_TIMEOUT={timeout_raw!r} must be a positive number of seconds.")
        upstream_timeout = 10.0

    metrics_token = env.get("SSO_METRICS_TOKEN", "").strip() or None
    if metrics_token is not None and len(metrics_token) < 32:
        problems.append("SSO_METRICS_TOKEN must be at least 32 characters (e.g. from "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`).")

    webhook_secret = env.get("SSO_GITHUB_WEBHOOK_SECRET", "").strip() or None
    if webhook_secret is not None and len(webhook_secret) < 20:
        problems.append("SSO_GITHUB_WEBHOOK_SECRET must be at least 20 characters (e.g. from "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                        "and the same value set as the organisation webhook's secret.")

    support_url = _support_url(env.get("SSO_SUPPORT_URL", "").strip(), problems)

    redis_url = env.get("SSO_REDIS_URL", "redis://127.0.0.1:6379/0").strip()
    redis_scheme = redis_url.split("://", 1)[0]
    wait_raw = env.get("SSO_REDIS_WAIT_REPLICAS", "").strip()
    wait_replicas = 1 if redis_scheme == "redis+sentinel" else 0
    if wait_raw:
        if not wait_raw.isdigit() or int(wait_raw) > 10:
            problems.append(f"SSO_REDIS_WAIT_REPLICAS={wait_raw!r} must be a whole number "
                            "from 0 to 10.")
        else:
            wait_replicas = int(wait_raw)
    if wait_replicas and redis_scheme.endswith("+cluster"):
        problems.append("SSO_REDIS_WAIT_REPLICAS is not supported with redis+cluster:// "
                        "(WAIT would reach another node than the write); set it to 0.")
    # Numeric GitHub ids or logins ("@login" accepted); logins bind to their first id
    # (sso/accounts.py).
    raw_admins = _split(env.get("SSO_BOOTSTRAP_ADMINS", ""))
    for entry in raw_admins:
        if entry.startswith("@") and entry[1:].isdigit():
            # Digits mean an id here: "@12345" would silently name another account.
            problems.append(f"SSO_BOOTSTRAP_ADMINS entry {entry!r} is ambiguous: write the "
                            "account's numeric id (without @); all-digit logins are not "
                            "supported.")
    bootstrap_admins = tuple(a.lower().removeprefix("@") for a in raw_admins)
    forward_auth_domains = tuple(
        d.lower().lstrip(".") for d in _split(env.get("SSO_FORWARD_AUTH_DOMAINS", ""))
    )
    forget_after_days = _count("SSO_FORGET_AFTER_DAYS", env.get("SSO_FORGET_AFTER_DAYS"), problems,
                               default=400)
    if forget_after_days > 36_500:
        problems.append(f"SSO_FORGET_AFTER_DAYS={forget_after_days} is more than a century: "
                        "use 0 to never forget anyone.")
    warnings: list[str] = []
    if 0 < forget_after_days <= 366:
        warnings.append(
            f"SSO_FORGET_AFTER_DAYS={forget_after_days} is shorter than the longest refresh "
            "token (366 days): people who only refresh tokens, never signing in at the "
            "browser, will be forgotten and their tokens end.")
    if production:
        _production_hardening(
            secret_key=secret_key, github_urls=[github_url, github_api_url],
            cookie_domain=cookie_domain, forward_auth_domains=forward_auth_domains,
            redis_url=redis_url, allow_any=allow_any, bootstrap_admins=bootstrap_admins,
            problems=problems, warnings=warnings,
        )

    settings = Settings(
        env=mode,
        issuer=issuer,
        secret_key=secret_key,
        redis_url=redis_url,
        redis_prefix=prefix,
        redis_wait_replicas=wait_replicas,
        github_url=github_url,
        github_api_url=github_api_url,
        github_client_id=client_id,
        github_client_secret=client_secret,
        github_orgs=orgs,
        allow_any_github_user=allow_any,
        bootstrap_admins=bootstrap_admins,
        membership_max_age=max_age,
        membership_max_stale=max_stale,
        cookie_domain=cookie_domain,
        forward_auth_domains=forward_auth_domains,
        session_idle_seconds=idle,
        session_absolute_seconds=absolute,
        upstream_timeout=upstream_timeout,
        audit_max_events=_int(
            "SSO_AUDIT_MAX_EVENTS", env.get("SSO_AUDIT_MAX_EVENTS"), 100_000, problems
        ),
        forget_after_days=forget_after_days,
        log_repeat_seconds=_int(
            "SSO_LOG_REPEAT_SECONDS", env.get("SSO_LOG_REPEAT_SECONDS"), 10, problems
        ),
        metrics_token=metrics_token,
        github_webhook_secret=webhook_secret,
        device_poll_interval=_int(
            "SSO_DEVICE_POLL_INTERVAL", env.get("SSO_DEVICE_POLL_INTERVAL"), 5, problems
        ),
        trusted_proxy_hops=_count(
            "SSO_TRUSTED_PROXY_HOPS", env.get("SSO_TRUSTED_PROXY_HOPS"), problems
        ),
        rate_limits=_rate_limits(env.get("SSO_RATE_LIMITS", ""), problems),
        support_url=support_url,
        warnings=tuple(warnings),
    )
    if problems:
        raise ConfigError(problems)
    return settings
