"""The machine endpoints' everyday requests, answered without Flask's or Authlib's machinery.

Token requests and introspection are an OpenID provider's hottest paths. The profile
(docs/benchmarks.md) put Flask's per-request work and Authlib's grant and endpoint objects
at over half the CPU of a client-credentials request, more than the signature. This WSGI
layer answers the ordinary requests of ``POST /token`` (client credentials, refresh and
the authorization-code exchange) and ``POST /introspect`` itself, through the same policy
objects the full path uses (the client registry, :class:`~sso.oidc.records.Records`,
:meth:`Provider.subject <sso.oidc.server.Provider.subject>`,
:class:`~sso.oidc.tokens.TokenIssuer`, :func:`~sso.oidc.endpoints.lookup_token`).

Everything else goes to Flask and Authlib unchanged, so every refusal, the rate limit on
failed client authentication and every audit record still come from one implementation:
other grants, a query string, a repeated, empty or unknown parameter, a ``scope`` on a
refresh, RFC 8707 ``resource`` outside client credentials, any request that fails before
something is written (client authentication, a grant type the client may not use, a scope
or resource it may not ask for), a refresh token that is unknown, reused, another client's
or bound to resources (the claim script leaves those untouched), and a code that is unknown
or replayed (the full path revokes what a replayed code gave). Only after a refresh token
or a code is spent does this layer answer an error itself, in the full path's words.
tests/oidc/test_lean_endpoints.py sends the same requests both ways and compares the answers.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import time
from collections.abc import Callable, Iterable
from types import EllipsisType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN, create_s256_code_challenge
from authlib.oidc.core.util import create_half_hash

from sso.crypto import new_secret
from sso.metrics import ROUTE, TOKENS
from sso.oidc.endpoints import introspection, lookup_token, may_introspect
from sso.oidc.grants import AuthorizationCode, OpenIDCode
from sso.oidc.records import Claim, Exchange, Grant
from sso.oidc.tokens import Subject, TokenIssuer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from sso.accounts import Profile
    from sso.oidc.clients import Client
    from sso.registry import Registry

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"),
           ("Pragma", "no-cache"))
# The parameters each grant's ordinary request may carry; any other means the full path.
PARAMETERS = {
    "client_credentials": frozenset({"grant_type", "scope", "resource", "client_id",
                                     "client_secret"}),
    "refresh_token": frozenset({"grant_type", "refresh_token", "client_id",
                                "client_secret"}),
    "authorization_code": frozenset({"grant_type", "code", "redirect_uri", "code_verifier",
                                     "client_id", "client_secret"}),
}
INTROSPECTION = frozenset({"token", "token_type_hint", "client_id", "client_secret"})
PATHS = frozenset({"/token", "/introspect"})
MAX_FIELDS = 16

Answer = tuple[int, dict[str, Any]]


class Decline(Exception):
    """Not an ordinary request: Flask and Authlib answer it, as it came."""


class Refused(Exception):
    """An OAuth error answered here: only after a refresh token was claimed."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


class LeanEndpoints:
    """WSGI layer just outside Flask's app for ``POST /token`` and ``POST /introspect``.

    ``enabled`` off sends every request the full way (the tests compare both)."""

    def __init__(self, app: WSGIApplication, flask_app: Flask, reg: Registry) -> None:
        self.app = app
        self.flask = flask_app
        self.enabled = True
        self.max_length = int(flask_app.config["MAX_CONTENT_LENGTH"])
        self.clients = reg.clients
        self.records = reg.records
        self.provider = reg.provider
        self.tokens = TokenIssuer(reg.provider.issuer, reg.provider.keys)
        self.openid = OpenIDCode(reg.provider.issuer, reg.provider.keys)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path not in PATHS or environ.get("REQUEST_METHOD") != "POST" or not self.enabled:
            return self.app(environ, start_response)
        body = self._body(environ)
        if body is None:
            return self.app(environ, start_response)
        environ["wsgi.input"] = io.BytesIO(body)  # as it came, should Flask read it
        try:
            issue = self._prepare(environ, body)
        except Exception:  # noqa: BLE001 - Decline, or an outage: nothing written, Flask answers
            return self.app(environ, start_response)
        try:
            answer = issue()
        except Decline:
            return self.app(environ, start_response)
        except Refused as refused:
            answer = 400, {"error": refused.error, "error_description": refused.description}
        except Exception as exc:  # noqa: BLE001 - after a write: Flask's handlers answer it
            return self._flask_error(environ, start_response, exc)
        environ[ROUTE] = path
        status, payload = answer
        data = orjson.dumps(payload)
        start_response("200 OK" if status == 200 else "400 BAD REQUEST",
                       [*HEADERS, ("Content-Length", str(len(data)))])
        return [data]

    def _body(self, environ: WSGIEnvironment) -> bytes | None:
        """A url-encoded body of known length within the limit, else None (Flask reads)."""
        length = environ.get("CONTENT_LENGTH", "")
        if (environ.get("CONTENT_TYPE") != FORM or not (length.isascii() and length.isdigit())
                or int(length) > self.max_length or "HTTP_TRANSFER_ENCODING" in environ
                or environ.get("QUERY_STRING")):
            return None
        body: bytes = environ["wsgi.input"].read(int(length))
        if len(body) != int(length):
            environ["wsgi.input"] = io.BytesIO(body)  # Flask answers the short body
            return None
        return body

    def _prepare(self, environ: WSGIEnvironment, body: bytes) -> Callable[[], Answer]:
        """Every check that needs no write, or :class:`Decline`; then what issues."""
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True,
                              errors="strict", max_num_fields=MAX_FIELDS)
        except ValueError:  # not UTF-8 (raw or percent-encoded), malformed, too many fields
            raise Decline from None
        form: dict[str, str] = {}
        resources: list[str] = []
        for name, value in pairs:
            if not value or (name in form and name != "resource"):
                raise Decline  # RFC 6749 §3.1: empty means omitted; repeated is refused
            if name == "resource":
                resources.append(value)
            form[name] = value
        if environ["PATH_INFO"] == "/introspect":
            return self._introspect(environ, form)
        allowed = PARAMETERS.get(form.get("grant_type", ""))
        if allowed is None or not form.keys() <= allowed:
            raise Decline
        client = self._client(environ, form)
        if not client.check_grant_type(form["grant_type"]):
            raise Decline
        if form["grant_type"] == "client_credentials":
            return self._client_credentials(client, form, resources)
        if form["grant_type"] == "refresh_token":
            return self._refresh(client, form)
        return self._code(client, form)

    def _client(self, environ: WSGIEnvironment, form: dict[str, str]) -> Client:
        """RFC 6749 §2.3.1 client authentication, one method, as Authlib does it."""
        header = environ.get("HTTP_AUTHORIZATION")
        secret: str | None
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "basic" or "client_secret" in form or "client_id" in form:
                raise Decline
            try:
                decoded = base64.b64decode(credentials).decode()
            except ValueError:  # binascii.Error and UnicodeDecodeError included
                raise Decline from None
            client_id, colon, secret = decoded.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
            if not (colon and client_id and secret):
                raise Decline
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret")
        client = self.clients.shared(client_id)
        if client is None:
            raise Decline
        if secret is None:  # "none": public clients only, and PKCE bound their codes
            if not client.public:
                raise Decline
        elif client.public or not client.check_client_secret(secret):
            raise Decline
        return client

    def _introspect(self, environ: WSGIEnvironment, form: dict[str, str]
                    ) -> Callable[[], Answer]:
        """RFC 7662: confidential clients only (RFC 7662 §2.1), any hint (ignored, as on the
        full path); nothing is written, so nothing needs answering here but the result."""
        if not form.keys() <= INTROSPECTION or "token" not in form:
            raise Decline
        client = self._client(environ, form)
        if client.public:
            raise Decline
        presented = form["token"]

        def issue() -> Answer:
            token = lookup_token(self.provider, presented, live_only=True)
            if token is None or not may_introspect(token, client):
                return 200, {"active": False}
            return 200, introspection(self.provider, token)

        return issue

    def _client_credentials(self, client: Client, form: dict[str, str], resources: list[str]
                            ) -> Callable[[], Answer]:
        # RFC 6749 §4.4: confidential clients only; scopes and resources it registered.
        requested = form.get("scope")
        if client.public or not set(scope_to_list(requested) or []) <= set(client.scopes):
            raise Decline
        if any(resource not in (client.audiences or []) for resource in resources):
            raise Decline

        def issue() -> Answer:
            scope = client.get_allowed_scope(requested)
            token = self._token(client, "client_credentials", None, scope, resources, None)
            TOKENS.labels("client_credentials").inc()
            return 200, token

        return issue

    def _refresh(self, client: Client, form: dict[str, str]) -> Callable[[], Answer]:
        presented = form.get("refresh_token")
        if not presented:
            raise Decline

        def issue() -> Answer:
            # RFC 9700 §4.14.2: claimed (rotated) before anything is issued; a token this
            # script leaves alone (reused, unknown, ...) goes the full way, which decides.
            # The new token is drawn first, so that the claim can write it: one round trip.
            new = new_secret(32)
            claim = self.records.claim_own_refresh_token(
                presented, client.client_id, (client.scopes, new, int(client.refresh_idle_ttl)))
            if claim is None:
                raise Decline
            scope = client.get_allowed_scope(str(claim.record["s"]))
            refresh = new if "offline_access" in scope.split() else None
            if claim.grant is not ... and claim.rotated != (refresh is not None):
                if claim.rotated:  # never: the script writes only the scope kept here
                    self.records.forget_refresh_token(new)
                raise Refused("invalid_grant", "Invalid refresh token.")
            grant, subject = self._grant_and_subject(client, claim, scope, refresh)
            if grant is None or subject is None:
                if refresh is not None:
                    self.records.forget_refresh_token(refresh)
                raise Refused("invalid_grant", "The grant behind this refresh token has ended."
                              if grant is None else "Your access has ended; sign in again.")
            subject.grant_id = grant.grant_id
            token = self._token(client, "refresh_token", subject, scope, [], refresh)
            TOKENS.labels("refresh_token").inc()
            return 200, token

        return issue

    def _code(self, client: Client, form: dict[str, str]) -> Callable[[], Answer]:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6) and an ID token (OIDC Core §3.1.3),
        checked in Authlib's order and answered in its words."""
        code, redirect_uri = form.get("code"), form.get("redirect_uri")
        if not code or not redirect_uri:
            raise Decline
        verifier = form.get("code_verifier")

        def issue() -> Answer:
            refreshable = client.check_grant_type("refresh_token")
            refresh = new_secret(32) if refreshable else None
            done = self.records.exchange_code(
                code, client_id=client.client_id, redirect_uri=redirect_uri,
                challenge=self._challenge(client, verifier), scopes=client.scopes,
                grant_ttl=int(client.refresh_absolute_ttl),
                refresh=(refresh, int(client.refresh_idle_ttl)) if refresh else None)
            data = done.data
            if done.status != "fresh" or data is None:
                raise Decline  # unknown, or a replay: the full path answers (and revokes)
            try:
                token = self._exchange(client, data, done, redirect_uri, verifier, refresh)
            except Exception:
                if done.created:  # the script wrote the grant before a check failed here
                    self._undo(str(data["g"]), refresh if done.kept else None)
                raise
            TOKENS.labels("authorization_code").inc()
            return 200, token

        return issue

    def _exchange(self, client: Client, data: dict[str, Any], done: Exchange,
                  redirect_uri: str, verifier: str | None, refresh: str | None
                  ) -> dict[str, Any]:
        """The checks and tokens of a redeemed code; the session read and the grant written
        here unless ``done`` says the redemption's round trip did both."""
        if data["c"] != client.client_id:
            raise Refused("invalid_grant", "Invalid 'code' in request.")
        if data["ru"] and redirect_uri != data["ru"]:
            raise Refused("invalid_grant", "Invalid 'redirect_uri' in request.")
        self._check_verifier(client, data.get("cc"), verifier)
        live, raw = (done.live, done.profile) if done.live is not None else \
            self.records.session_and_profile(data["sid"], data["u"])
        subject = self.provider.subject(
            data["u"], auth_time=int(data["at"]), sid=data["sid"], client=client,
            profile=self.provider.accounts.parse(raw)) if live else None
        if subject is None:
            raise Refused("invalid_grant", "There is no 'user' for this code.")
        subject.grant_id = data["g"]
        resources = list(data.get("res") or [])
        for resource in resources:  # RFC 8707: still registered for this client
            if resource not in (client.audiences or []):
                raise Refused("invalid_target", f"The resource {resource!r} is not "
                              "registered for this client.")
        scope = client.get_allowed_scope(str(data["s"]))
        token = self._token(client, "authorization_code", subject, scope, resources, refresh)
        keep = refresh is not None and "offline_access" in scope.split()
        if not keep:
            token.pop("refresh_token", None)
        if done.created is None:
            grant = Grant(subject.grant_id, data["u"], client.client_id, scope, data["sid"],
                          subject.auth_time, int(time.time()) + int(client.refresh_absolute_ttl))
            # False (born dead): answered all the same
            self.records.create_grant(grant, (refresh, int(client.refresh_idle_ttl),
                                              resources or None) if keep and refresh else None)
        elif done.created and done.kept != keep:  # never: the script checks the same
            raise Refused("invalid_grant", "Invalid 'code' in request.")
        if "openid" in scope.split():
            token["id_token"] = self._id_token(client, subject, data, token)
        return token

    def _undo(self, grant_id: str, refresh: str | None) -> None:
        """End a grant the redemption script wrote for a request refused (or failed)
        afterwards: its tokens were never sent. Best effort: an outage here leaves a grant
        nobody holds a token of, which expires with its family."""
        try:
            self.records.revoke_grant(grant_id)
            if refresh is not None:
                self.records.forget_refresh_token(refresh)
        except Exception:  # noqa: BLE001 - the request's own error is the one to answer
            log.warning("could not end grant %s after a refused code exchange", grant_id,
                        exc_info=True)

    @staticmethod
    def _challenge(client: Client, verifier: str | None) -> str:
        """What the one-trip redemption compares with the code's challenge: the verifier's
        S256 challenge, "" for a confidential client without one, "!" (no challenge looks
        like that) where :meth:`_check_verifier` would refuse whatever the code holds."""
        if not verifier:
            return "!" if client.public else ""
        return create_s256_code_challenge(verifier) if CODE_VERIFIER_PATTERN.match(
            verifier) else "!"

    @staticmethod
    def _check_verifier(client: Client, challenge: str | None, verifier: str | None) -> None:
        """Authlib's CodeChallenge.validate_code_verifier, S256 only, in its words."""
        if client.public and not verifier:
            raise Refused("invalid_request", "Missing 'code_verifier'")
        if not challenge and not verifier:
            return
        if not challenge:
            raise Refused("invalid_request", "The authorization request had no "
                          "'code_challenge', but a 'code_verifier' was provided.")
        if not verifier:
            raise Refused("invalid_request", "Missing 'code_verifier'")
        if not CODE_VERIFIER_PATTERN.match(verifier):
            raise Refused("invalid_request", "Invalid 'code_verifier'")
        if not hmac.compare_digest(create_s256_code_challenge(verifier), challenge):
            raise Refused("invalid_grant", "Code challenge failed.")

    def _id_token(self, client: Client, subject: Subject, data: dict[str, Any],
                  token: dict[str, Any]) -> str:
        """The ID token as Authlib's OpenIDToken.encode_id_token builds it, from the same
        :class:`~sso.oidc.grants.OpenIDCode` parts."""
        openid = self.openid
        alg = openid.get_client_algorithm(client)
        claims = openid.get_client_claims(client)
        claims.setdefault("auth_time", claims["iat"])
        claims.update(openid.get_authorization_code_claims(AuthorizationCode(data)))
        claims["at_hash"] = create_half_hash(token["access_token"], alg).decode()
        claims.update(openid.generate_user_info(subject, token["scope"]))
        return self.provider.keys.signer(alg).sign(claims, "JWT")

    def _grant_and_subject(self, client: Client, claim: Claim, scope: str,
                           refresh: str | None) -> tuple[Grant | None, Subject | None]:
        """The claimed token's grant (None: ended) and person (None: access ended), with
        the rotated token written: read by the claim's own round trip when it could, else
        one more (three for a record written before records named their person)."""
        records, record = self.records, claim.record
        grant_id, ttl = str(record["g"]), int(client.refresh_idle_ttl)
        profile: Profile | None | EllipsisType = ...
        if claim.grant is not ...:
            data, profile = claim.grant, self.provider.accounts.parse(claim.profile)
            grant = Grant.from_hash(grant_id, data) if data else None
        elif "u" in record:
            rotated = None if refresh is None else (refresh, client.client_id, scope, ttl)
            grant, raw = records.grant_and_profile(grant_id, str(record["u"]), rotated)
            profile = self.provider.accounts.parse(raw)
        else:
            grant = records.get_grant(grant_id)
            if grant is not None and refresh is not None:
                records.save_refresh_token(refresh, grant_id, client.client_id, scope, ttl,
                                           user_id=grant.user_id)
        if grant is None or grant.expires_at < time.time() or grant.user_id != record.get(
                "u", grant.user_id):
            return None, None
        return grant, self.provider.subject(grant.user_id, auth_time=grant.auth_time,
                                            sid=grant.sid, client=client, profile=profile)

    def _token(self, client: Client, grant_type: str, user: Any, scope: str,
               resources: list[str], refresh: str | None) -> dict[str, Any]:
        """The token response, as Authlib's BearerTokenGenerator lays it out."""
        access = self.tokens.sign_access_token(client, grant_type, user, scope,
                                               TokenIssuer.audience_of(client, resources))
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": access}
        if client.access_token_ttl:
            token["expires_in"] = int(client.access_token_ttl)
        if refresh:
            token["refresh_token"] = refresh
        if scope:
            token["scope"] = scope
        return token

    def _flask_error(self, environ: WSGIEnvironment, start_response: StartResponse,
                     exc: Exception) -> Iterable[bytes]:
        """An outage (or a bug) after a write: the answer Flask's error handlers give."""
        with self.flask.request_context(environ):
            response = self.flask.make_response(self.flask.handle_user_exception(exc))
        return response(environ, start_response)


def install(flask_app: Flask, reg: Registry) -> None:
    flask_app.wsgi_app = LeanEndpoints(  # type: ignore[method-assign]
        flask_app.wsgi_app, flask_app, reg)
