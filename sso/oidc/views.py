"""The ``oidc`` blueprint: discovery, JWKS, authorize (+ consent), token, userinfo,
introspection, revocation and RP-initiated logout.

Views are thin: Authlib validates and answers; these functions add the policy
Authlib leaves to us (error page vs. redirect, prompt/max_age, consent, required
roles) and the response hygiene (``iss``, 303 after form posts, no-store).
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import (
    Blueprint,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from werkzeug.wrappers import Response

from sso.crypto import hash_secret
from sso.login.start import begin_sign_in
from sso.oidc.scopes import scope_words
from sso.oidc.server import KeycardServer, Provider
from sso.oidc.tokens import Subject, is_client_subject, subject_for
from sso.registry import registry
from sso.sessions import ServerSession
from sso.web.bearer import bearer_error, bearer_token
from sso.web.csrf import csrf, origin_exempt
from sso.web.errors import error_response
from sso.web.ratelimit import limited

bp = Blueprint("oidc", __name__)

NO_REDIRECT_PARAMS = ("client_id", "redirect_uri")
# An echoed value has no business being large: an 800 KB nonce made a 1 MB ID token.
MAX_ECHOED_LENGTH = 512


def server() -> KeycardServer:
    return registry().server


def provider() -> Provider:
    return registry().provider


# -- discovery --------------------------------------------------------------------------


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    response = jsonify(registry().discovery)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/jwks.json")
def jwks() -> Response:
    response = jsonify(provider().keys.jwks())
    response.headers["Cache-Control"] = "public, max-age=60"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


# -- authorization endpoint -------------------------------------------------------------


def _page(status: int, title: str, message: str) -> Response:
    return error_response(status, title, message, code="invalid_request")


def _redirect_error(redirect_uri: str, error: str, description: str, state: str | None,
                    status: int = 302) -> Response:
    params = [("error", error), ("error_description", description)]
    if state:
        params.append(("state", state))
    params.append(("iss", provider().issuer))
    return redirect(add_params_to_uri(redirect_uri, params), code=status)


def _refused(client: Any, redirect_uri: str, values: Any, status: int) -> Response | None:
    """What Keycard refuses in an authorization request, as an error redirect (the
    redirect URI is already known to be the client's): the same checks at /authorize and
    at the consent decision, which can be posted without going through /authorize."""
    state = values.get("state")
    for name in ("state", "nonce"):
        if len(values.get(name) or "") > MAX_ECHOED_LENGTH:
            # Never reflect an oversized state: the error goes back without it.
            return _redirect_error(redirect_uri, "invalid_request",
                                   f"{name} is longer than {MAX_ECHOED_LENGTH} characters.",
                                   None if name == "state" else state, status)
    if "request" in values:  # OIDC Core §6.1; discovery: request_parameter_supported false
        return _redirect_error(redirect_uri, "request_not_supported",
                               "Request objects (the request parameter) are not supported.",
                               state, status)
    if "request_uri" in values:
        return _redirect_error(redirect_uri, "request_uri_not_supported",
                               "The request_uri parameter is not supported.", state, status)
    mode = values.get("response_mode")
    if mode is not None and mode != "query":
        # Discovery announces response_modes_supported ["query"]; the error code is the one
        # other providers use for this (no RFC registers one), and it goes back in the
        # query, the one mode we speak.
        return _redirect_error(redirect_uri, "unsupported_response_mode",
                               f"response_mode {mode[:40]!r} is not supported: only 'query'.",
                               state, status)
    resources = values.getlist("resource")
    if any(r not in (client.audiences or []) for r in resources):  # RFC 8707 §2
        return _redirect_error(redirect_uri, "invalid_target", "A requested resource is not "
                               "registered for this application.", state, status)
    return None


def _subject() -> Subject | None:
    if not current_user.is_authenticated or not isinstance(session, ServerSession):
        return None
    profile = current_user.profile
    sid = hash_secret(session.sid) if session.sid else ""
    return Subject(profile, subject_for(provider().issuer, profile.user_id),
                   int(session.get("auth_time", 0)), sid)


def _relogin(params: dict[str, str]) -> Response:
    """Send the browser through sign-in and back to this request (minus what forced it)."""
    again = {k: v for k, v in params.items() if k not in ("max_age",)}
    prompts = [p for p in again.pop("prompt", "").split() if p != "login"]
    if prompts:
        again["prompt"] = " ".join(prompts)
    next_url = url_for("oidc.authorize") + "?" + urlencode(again)
    # Straight to GitHub, not through a /login redirect (which would do exactly this).
    return begin_sign_in(next_url, params.get("login_hint") or None,
                         code=303 if request.method == "POST" else 302)


@bp.route("/authorize", methods=["GET", "POST"])
@origin_exempt  # an RP's auto-submitted form posts here cross-site; a POST
@csrf.exempt  # authorization request is no more powerful than the same GET.
@limited("sign_in", lambda: registry().limiter)
def authorize() -> Response:
    values = request.values
    for name in NO_REDIRECT_PARAMS:
        if len(values.getlist(name)) > 1:
            return _page(400, "Invalid sign-in request", f"The parameter {name} is repeated.")
    client = provider().clients.get(values.get("client_id", "")) if values.get(
        "client_id") else None
    if client is None:
        return _page(400, "Unknown application",
                     "The application that sent you here is not registered with Keycard.")
    redirect_uri = values.get("redirect_uri")
    if not redirect_uri or not client.check_redirect_uri(redirect_uri):
        # Never redirect to an address we cannot vouch for (an open redirector).
        return _page(400, "Invalid sign-in request",
                     f"{client.name} sent you here with a return address it has not "
                     "registered, so Keycard will not send you back there.")
    state = values.get("state")
    status = 303 if request.method == "POST" else 302
    refused = _refused(client, redirect_uri, values, status)
    if refused is not None:
        return refused
    params = {k: values.get(k, "") for k in values}
    subject = _subject()
    try:
        grant = server().get_consent_grant(end_user=subject)
    except OAuth2Error as error:
        return _redirect_error(redirect_uri, error.error, error.description or "", state, status)

    prompts = set(values.get("prompt", "").split())
    max_age = values.get("max_age")
    if subject is not None and max_age is not None:
        if not (max_age.isascii() and max_age.isdigit()):
            return _redirect_error(redirect_uri, "invalid_request", "max_age must be a number.",
                                   state, status)
        if time.time() - subject.auth_time > int(max_age):
            if "none" in prompts:
                return _redirect_error(redirect_uri, "login_required", "Sign-in is too old.",
                                       state, status)
            return _relogin(params)
    if subject is None or "login" in prompts:
        return _relogin(params)

    p = provider()
    if not p.may_use(subject.profile, client):
        p.audit("oauth.access_refused", actor=subject.profile.login, client=client.client_id)
        return error_response(403, f"You don't have access to {client.name}",
                              f"{client.name} is open to people with one of these roles: "
                              f"{', '.join(client.required_roles)}. Ask an administrator if "
                              "you need it.", code="access_denied")
    scopes = set(grant.request.scope.split())
    # An untrusted app asking for no scope still learns who the person is (sub, roles in
    # the access token): that too needs consent.
    needs_consent = not client.trusted and (
        "consent" in prompts
        or not scopes
        or not scopes <= p.records.consented_scopes(subject.profile.user_id, client.client_id)
    )
    if needs_consent:
        if "none" in prompts:
            return _redirect_error(redirect_uri, "consent_required",
                                   "The user has not approved this application yet.", state,
                                   status)
        return _consent_page(client, scopes, params)
    return _issue(grant, subject, status)


def _issue(grant: Any, subject: Subject, status: int) -> Response:
    response: Response = server().create_authorization_response(grant=grant, grant_user=subject)
    if response.status_code == 302 and status == 303:
        response.status_code = 303  # a form post ends in 303, never 307
    return response


def _consent_page(client: Any, scopes: set[str], params: dict[str, str]) -> Response:
    words = scope_words(scopes)
    return make_response(render_template("oidc/consent.html", client=client, scopes=words,
                                    params=params))


@bp.post("/authorize/decision")
def decision() -> Response:
    """The consent form's answer; CSRF-protected like every form."""
    if request.query_string:
        # Authlib reads request.values, where the query wins over the form: parameters
        # there would bypass every check below, which reads the form.
        return _page(400, "Invalid sign-in request", "This consent form is not valid.")
    subject = _subject()
    values = request.form
    client = provider().clients.get(values.get("client_id", ""))
    redirect_uri = values.get("redirect_uri", "")
    if client is None or not client.check_redirect_uri(redirect_uri):
        return _page(400, "Invalid sign-in request", "This consent form is not valid.")
    refused = _refused(client, redirect_uri, values, 303)
    if refused is not None:
        return refused
    if subject is None:
        return _relogin({k: v for k, v in values.items() if k not in ("csrf_token", "decision")})
    try:
        grant = server().get_consent_grant(end_user=subject)
    except OAuth2Error as error:
        return _redirect_error(redirect_uri, error.error, error.description or "",
                               values.get("state"), 303)
    if values.get("decision") != "approve":
        provider().audit("oauth.consent_denied", actor=subject.profile.login,
                         client=client.client_id)
        return _redirect_error(redirect_uri, "access_denied", "The user declined.",
                               values.get("state"), 303)
    if not provider().may_use(subject.profile, client):
        return error_response(403, f"You don't have access to {client.name}",
                              "You no longer hold a role this application requires.",
                              code="access_denied")
    scopes = set(grant.request.scope.split())
    provider().records.remember_consent(subject.profile.user_id, client.client_id, scopes)
    provider().audit("oauth.consent_granted", actor=subject.profile.login,
                     client=client.client_id, scopes=sorted(scopes))
    return _issue(grant, subject, 303)


# -- token, userinfo, introspection, revocation -----------------------------------------


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _repeated_parameter() -> Response | None:
    """RFC 6749 §3.1: a parameter sent twice is refused (Authlib would take the first);
    ``resource`` may repeat (RFC 8707 §2)."""
    for name, values in request.values.lists():
        if len(values) > 1 and name != "resource":
            response = jsonify(error="invalid_request",
                               error_description=f"The parameter {name!r} was sent twice.")
            response.status_code = 400
            return _no_store(response)
    return None


@bp.post("/token")
@origin_exempt
@csrf.exempt
def token() -> Response:
    return (_malformed_basic() or _repeated_parameter()
            or _no_store(server().create_token_response()))


@bp.post("/device_authorization")
@origin_exempt
@csrf.exempt
@limited("device", lambda: registry().limiter)
def device_authorization() -> Response:
    """RFC 8628 §3.1: a device asks for a user code (see sso/oidc/device.py)."""
    return _malformed_basic() or _no_store(
        server().create_endpoint_response("device_authorization"))


@bp.route("/userinfo", methods=["GET", "POST"])
@origin_exempt
@csrf.exempt
def userinfo() -> Response:
    token_value = bearer_token() or ""
    if not token_value and request.method == "POST":
        token_value = request.form.get("access_token", "")
    claims = provider().token_claims(token_value) if token_value else None
    if claims is None:
        return _no_store(bearer_error(
            401, "invalid_token", "The access token is missing, expired, revoked or not ours.",
            'Bearer error="invalid_token"' if token_value else 'Bearer realm="keycard"'))
    if is_client_subject(claims.get("sub")):
        # A client-credentials token: no end user, so no UserInfo (OIDC Core §5.3).
        return _no_store(bearer_error(
            401, "invalid_token", "This token was issued to a service, not for a person.",
            'Bearer error="invalid_token"'))
    scopes = set(str(claims.get("scope", "")).split())
    if "openid" not in scopes:
        return _no_store(bearer_error(
            403, "insufficient_scope", "This token was not issued with the openid scope.",
            'Bearer error="insufficient_scope", scope="openid"'))
    released = {"sub"}
    released |= {"name", "preferred_username", "picture"} if "profile" in scopes else set()
    released |= {"email", "email_verified"} if "email" in scopes else set()
    released |= {"groups"} if "groups" in scopes else set()
    released |= {"roles"} if "roles" in scopes else set()
    return _no_store(jsonify({k: v for k, v in claims.items() if k in released}))


def _invalid_client(description: str) -> Response:
    response = jsonify(error="invalid_client", error_description=description)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="keycard"'
    return _no_store(response)


def _malformed_basic() -> Response | None:
    """RFC 6749 §2.3.1: Basic credentials are UTF-8 once decoded. Authlib decodes them
    without catching the error, so bytes that are not UTF-8 would end in a 500."""
    # Read the way Authlib's extract_basic_authorization reads it, which catches neither
    # a str that is not ASCII nor bytes that are not UTF-8.
    header = request.headers.get("Authorization", "")
    if " " not in header:
        return None
    parts = header.split(None, 1)
    if len(parts) != 2:  # "Basic " alone: Authlib's unpacking would raise
        return _invalid_client("The Authorization header is malformed.")
    if parts[0].lower() != "basic":
        return None
    try:
        base64.b64decode(parts[1]).decode("utf-8")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return _invalid_client("The Basic credentials are not valid base64 of UTF-8 text.")
    return None


def _client_auth_missing() -> Response | None:
    has_basic = request.headers.get("Authorization", "").lower().startswith("basic ")
    if not has_basic and not request.form.get("client_id"):
        return _invalid_client("Client authentication is required.")
    return _malformed_basic()


@bp.post("/introspect")
@origin_exempt
@csrf.exempt
def introspect() -> Response:
    return _client_auth_missing() or _no_store(
        server().create_endpoint_response("introspection"))


@bp.post("/revoke")
@origin_exempt
@csrf.exempt
def revoke() -> Response:
    return _client_auth_missing() or _no_store(server().create_endpoint_response("revocation"))


# -- RP-initiated logout ----------------------------------------------------------------


@bp.route("/end-session", methods=["GET", "POST"])
@csrf.exempt
def end_session() -> Response:
    try:
        validated = server().validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _page(400, "Sign-out request not valid", error.description or error.error)
    hint = validated.id_token_claims
    sid = session.sid if isinstance(session, ServerSession) else None
    own = bool(hint) and bool(sid) and hint.get("sid") == hash_secret(str(sid))[:22]
    if sid and not own:
        # A live session the request cannot prove it belongs to (no hint, or someone
        # else's: anyone can hold *some* Keycard ID token): ask, with a CSRF-protected form,
        # so <img src=/end-session?...> cannot sign people out. With no session there is
        # nothing to end, and the RP gets its redirect at once.
        if request.method == "GET":
            return make_response(render_template("oidc/logout_confirm.html",
                                                 params=request.args))
        if not _csrf_ok():
            return _page(403, "This form has expired", "Reload the page and try again.")
    response: Response | None = server().create_endpoint_response("end_session", validated)
    if response is None:
        return redirect(url_for("auth.signed_out"), code=303)
    if request.method == "POST":
        response.status_code = 303
    return response


def _csrf_ok() -> bool:
    from flask_wtf.csrf import CSRFError

    try:
        csrf.protect()
    except CSRFError:
        return False
    return True
