"""``sso login``: sign in from a terminal with the device grant (RFC 8628), issue #5.

A pure HTTP client of a remote Keycard: it needs no app, no Redis, no secret. It
finds the endpoints in the issuer's discovery document, shows the person a code and
a URL, polls the token endpoint as fast as the server allows (``interval``, plus 5 s
after every ``slow_down``), and prints the claims of the tokens it gets, verified
against the issuer's JWKS so a spoofed answer cannot print someone else's name.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from sso.crypto import SIGNING_ALGS

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ALGORITHMS = list(SIGNING_ALGS)  # what Keycard signs with; never "none" or HMAC
TIMEOUT = 10.0


class LoginFailed(click.ClickException):
    """A clear, one-line reason; exits 1 (click prints ``Error: ...``)."""


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise LoginFailed(f"{what} answered HTTP {response.status_code} without JSON.") from exc
    if not isinstance(data, dict):
        raise LoginFailed(f"{what} answered something that is not a JSON object.")
    return data


def _call(method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise LoginFailed(f"Cannot reach {what} at {url}: {exc}") from exc


def discover(issuer: str) -> dict[str, Any]:
    url = f"{issuer}/.well-known/openid-configuration"
    response = _call("GET", url, "the issuer")
    if response.status_code != 200:
        raise LoginFailed(f"{url} answered HTTP {response.status_code}; is {issuer} a Keycard?")
    meta = _json(response, "Discovery")
    # OIDC Discovery §4.3: the issuer in the document must be the one we asked.
    if meta.get("issuer") != issuer:
        raise LoginFailed(f"The discovery document names issuer {meta.get('issuer')!r}, "
                          f"not {issuer!r}.")
    for name in ("device_authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not meta.get(name):
            raise LoginFailed(f"{issuer} does not announce a {name}.")
    return meta


def verify(token: str, keys: KeySet, issuer: str, audience: str | None) -> dict[str, Any]:
    """Signature (RS256/ES256 from the issuer's JWKS), ``iss``, ``exp`` and ``aud``."""
    try:
        decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
        rules: dict[str, Any] = {"iss": {"essential": True, "value": issuer},
                                 "exp": {"essential": True}}
        if audience is not None:
            rules["aud"] = {"essential": True, "value": audience}
        jwt.JWTClaimsRegistry(**rules).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise LoginFailed(f"A token from {issuer} did not verify: {exc}") from exc
    return dict(decoded.claims)


def poll(meta: dict[str, Any], client_id: str, grant: dict[str, Any]) -> dict[str, Any]:
    """Ask for tokens until the person decides, the code expires, or the server says no."""
    interval = int(grant.get("interval") or 5)
    deadline = time.monotonic() + int(grant.get("expires_in") or 600)
    while True:
        time.sleep(interval)  # RFC 8628 §3.5: wait at least `interval` between polls
        if time.monotonic() > deadline:
            raise LoginFailed("The code expired before it was approved. Run `sso login` again.")
        response = _call("POST", meta["token_endpoint"], "the token endpoint", data={
            "grant_type": DEVICE_GRANT, "device_code": grant["device_code"],
            "client_id": client_id})
        answer = _json(response, "The token endpoint")
        if response.status_code == 200:
            return answer
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise LoginFailed("Access was denied: the sign-in was declined in the browser "
                              "(or you lack a role this application requires).")
        if error == "expired_token":
            raise LoginFailed("The code expired before it was approved. Run `sso login` again.")
        raise LoginFailed(f"Sign-in failed: {error or response.status_code}: "
                          f"{answer.get('error_description', '')}".rstrip(": "))


@click.command("login", help="Sign in from a terminal with the device flow (RFC 8628) and "
               "print the claims of the tokens you get.")
@click.option("--issuer", required=True, help="Keycard's base URL, e.g. https://sso.example.com")
@click.option("--client-id", required=True, help="A client registered for the device grant.")
@click.option("--scope", default="openid profile email", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def login_command(issuer: str, client_id: str, scope: str, as_json: bool) -> None:
    issuer = issuer.rstrip("/")
    meta = discover(issuer)
    response = _call("POST", meta["device_authorization_endpoint"],
                     "the device authorization endpoint",
                     data={"client_id": client_id, "scope": scope})
    grant = _json(response, "The device authorization endpoint")
    if response.status_code != 200:
        raise LoginFailed(f"Keycard refused the request: {grant.get('error')}: "
                          f"{grant.get('error_description', '')}".rstrip(": "))
    # With --json the instructions go to stderr, so stdout stays one JSON document.
    say = click.echo if not as_json else (lambda text: click.echo(text, err=True))
    say(f"To sign in, open {grant['verification_uri']} and enter the code: "
        f"{grant['user_code']}")
    if grant.get("verification_uri_complete"):
        say(f"Or open: {grant['verification_uri_complete']}")
    say("Waiting for approval...")

    tokens = poll(meta, client_id, grant)
    jwks = _json(_call("GET", meta["jwks_uri"], "the JWKS"), "The JWKS")
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError) as exc:
        raise LoginFailed(f"The issuer's JWKS is not usable: {exc}") from exc
    access_claims = verify(str(tokens.get("access_token", "")), keys, issuer, None)
    id_claims = (verify(str(tokens["id_token"]), keys, issuer, client_id)
                 if tokens.get("id_token") else {})
    if as_json:
        click.echo(json.dumps({"access_token": tokens.get("access_token"),
                               "id_token_claims": id_claims,
                               "access_token_claims": access_claims}, indent=2, sort_keys=True))
        return
    who = id_claims.get("preferred_username") or access_claims.get("preferred_username") \
        or access_claims.get("sub")
    click.echo(f"Signed in as {who}.")
    for title, claims in (("ID token claims", id_claims), ("Access token claims", access_claims)):
        if claims:
            click.echo(f"{title}:")
            for name in sorted(claims):
                click.echo(f"  {name}: {json.dumps(claims[name])}")
