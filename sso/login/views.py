"""The ``auth`` blueprint: ``/login``, the upstream callback, sign-out."""

from __future__ import annotations

from flask import (
    Blueprint,
    after_this_request,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.ctx import RequestContext
from flask_login import current_user, login_required, login_user
from werkzeug.wrappers import Response

from sso.login.flow import SignInRefused
from sso.login.start import begin_sign_in, binding_cookie
from sso.login.users import User
from sso.metrics import SIGNIN_REFUSED_ANONYMOUS
from sso.registry import registry
from sso.sessions import ServerSession, end_browser_session
from sso.upstream.base import AccessDenied, BadCredentials, NotAMember, UpstreamError
from sso.web.errors import error_response
from sso.web.ratelimit import limited
from sso.web.redirects import safe_next

bp = Blueprint("auth", __name__)


def _client() -> dict[str, str]:
    return {"ip": request.remote_addr or "", "user_agent": request.headers.get("User-Agent", "")}


@bp.get("/login")
@limited("sign_in", lambda: registry().limiter)
def login() -> Response:
    next_url = safe_next(request.args.get("next"))
    prompt = request.args.get("prompt")
    if current_user.is_authenticated and prompt not in ("login", "select_account"):
        return redirect(next_url)
    # "Use a different GitHub account": GitHub shows its account picker instead of going on
    # with the account this browser is signed in to there.
    return begin_sign_in(next_url, request.args.get("login_hint"),
                         select_account=prompt == "select_account")


@bp.get("/auth/github/callback")
@limited("sign_in", lambda: registry().limiter)
def callback() -> Response:
    svc = registry()
    # The binding cookie is single-use like the state: drop it whatever the outcome,
    # including when an upstream error below is turned into a page by the handlers.
    after_this_request(_clear_binding)
    try:
        pending = svc.signin.consume(
            request.args.get("state"), request.cookies.get(binding_cookie())
        )
    except SignInRefused as exc:
        SIGNIN_REFUSED_ANONYMOUS.labels(exc.reason).inc()
        return error_response(400, "Sign-in could not be completed", exc.message,
                              code=exc.reason, action_url=url_for("auth.login"),
                              action_label="Start again")
    error = request.args.get("error")
    if error == "access_denied":
        # The person pressed Cancel on GitHub: their choice, not an error.
        SIGNIN_REFUSED_ANONYMOUS.labels(AccessDenied.audit_reason).inc()
        return make_response(render_template(
            "auth/cancelled.html", retry_url=url_for("auth.login", next=pending.next_url)))
    if error:
        failed = UpstreamError(
            "GitHub could not complete the sign-in. Please try again.",
            detail=f"upstream error {error}: {request.args.get('error_description', '')}",
        )
        SIGNIN_REFUSED_ANONYMOUS.labels(failed.audit_reason).inc()
        raise failed
    code = request.args.get("code")
    if not code:
        return error_response(400, "Sign-in could not be completed",
                              "GitHub's answer carried no code. Please try again.",
                              code="invalid_request", retry=True)
    try:
        identity, token = svc.signin.finish(pending, code)
    except BadCredentials as exc:  # a code GitHub does not accept: anyone can send one
        SIGNIN_REFUSED_ANONYMOUS.labels(exc.audit_reason).inc()
        raise
    except UpstreamError as exc:
        svc.audit.record("signin.refused", reason=exc.audit_reason, **_client())
        raise
    try:
        svc.accounts.admit(identity)
    except UpstreamError as exc:
        # The subject names who tried, so the audit log's person filter finds them.
        svc.audit.record("signin.refused", subject=identity.login, reason=exc.audit_reason,
                         login=identity.login, user_id=identity.user_id, **_client())
        if isinstance(exc, NotAMember):
            return _outsider_page(exc, pending.next_url)
        raise
    profile = svc.accounts.complete_sign_in(identity, token)
    assert isinstance(session, ServerSession)
    svc.sessions.begin(session, profile.user_id, profile.as_dict())
    login_user(User(profile), fresh=True)
    # Flask-Login's "_id" (a 128-character IP/UA digest) only serves session_protection,
    # which is off: server-side sessions bind the browser already. Dropping it keeps a
    # session record under a kilobyte.
    session.pop("_id", None)
    svc.audit.record("signin.success", actor=profile.login, subject=profile.login,
                     user_id=profile.user_id, roles=profile.roles, **_client())
    response = _continue(safe_next(pending.next_url))
    # Once an hour per deployment, after the answer is sent: forget people who stopped
    # signing in (SSO_FORGET_AFTER_DAYS). A sign-in is when someone is around to pay for it.
    response.call_on_close(svc.forgetting.maybe_run)
    return response


def _continue(next_url: str) -> Response:
    """Where the browser goes after signing in. An authorization request that sent it to
    sign in and now goes straight back to the app (a code, or an OAuth error) is answered
    here, as ``/authorize`` answers it, instead of one more redirect: issue #15, one request
    less per sign-in. Anything else ``/authorize`` would answer (a consent page, an error
    page, a new sign-in) gets the redirect, so that page lives at its own reloadable address
    and a new sign-in's binding cookie is not cleared with this one's.
    The view runs in a request context of its own with this request's session and user,
    not counted against the rate limit again (one HTTP request, counted at the callback)."""
    path, _, query = next_url.partition("?")
    if path != url_for("oidc.authorize"):
        return redirect(next_url)
    environ = {k: v for k, v in request.environ.items() if k != "werkzeug.request"}
    environ.update(PATH_INFO=path[len(request.script_root):], QUERY_STRING=query,
                   REQUEST_METHOD="GET")
    environ.pop("CONTENT_TYPE", None)
    environ.pop("CONTENT_LENGTH", None)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    signed_in = session._get_current_object()  # type: ignore[attr-defined]
    # Saved first: the new session's id exists only once it is written, and the code must
    # be bound to it (signing out ends what the session's codes would give).
    cookies = app.response_class()
    app.session_interface.save_session(app, signed_in, cookies)
    signed_in.modified = False  # written; the end of this request saves only later changes
    try:
        with RequestContext(app, environ, session=signed_in):
            answer: Response = app.make_response(app.view_functions["oidc.authorize"]())
    except Exception as exc:  # noqa: BLE001 - answered by the handlers, the cookie kept
        answer = app.make_response(app.handle_user_exception(exc))
    starts_sign_in = any(cookie.startswith(binding_cookie() + "=")
                         for cookie in answer.headers.getlist("Set-Cookie"))
    back_to_app = answer.status_code in (302, 303) and not starts_sign_in
    response = answer if back_to_app or answer.status_code >= 500 else redirect(next_url)
    for cookie in cookies.headers.getlist("Set-Cookie"):
        response.headers.add("Set-Cookie", cookie)
    response.vary.add("Cookie")
    return response


def _outsider_page(exc: NotAMember, next_url: str) -> Response:
    """A GitHub account that may not use Keycard: offer to sign in with another one (GitHub's
    account picker, or signing out of GitHub first)."""
    return error_response(
        exc.status, exc.title, exc.message, code=exc.audit_reason,
        action_url=url_for("auth.login", prompt="select_account", next=next_url),
        action_label="Use a different GitHub account",
        upstream_logout_url=f"{registry().settings.github_url}/logout",
    )


def _clear_binding(response: Response) -> Response:
    response.delete_cookie(binding_cookie(), path="/", secure=registry().settings.secure_cookies,
                           httponly=True, samesite="Lax")
    return response


@bp.post("/logout")
def logout() -> Response:
    reg = registry()
    end_browser_session(reg.sessions, reg.audit, reason="user", ip=request.remote_addr or "")
    return redirect(url_for("auth.signed_out"), code=303)


@bp.post("/logout/everywhere")
@login_required
def logout_everywhere() -> Response:
    assert isinstance(session, ServerSession)
    user = current_user.profile
    ended = registry().accounts.end_all_sessions(user.user_id)
    registry().audit.record("signout.everywhere", actor=user.login, subject=user.login,
                            sessions=ended, **_client())
    session.end()
    return redirect(url_for("auth.signed_out", everywhere=1), code=303)


@bp.get("/signed-out")
def signed_out() -> Response:
    # No flash here: the session that would carry it has just ended.
    return make_response(render_template("auth/signed_out.html",
                                         everywhere=request.args.get("everywhere") == "1"))

