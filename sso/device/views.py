"""The ``device`` blueprint: ``/device``, where a person approves a device's sign-in.

RFC 8628 §3.3 and §5.4: the person types (or confirms) the code shown on the device,
sees which application asks for what, and approves or denies with a CSRF-protected
form post. Wrong codes are counted per person (not per IP: behind a proxy or NAT an
address is everyone); over the limit every try,
even a right one, gets a 429 until the window passes (§5.1: user codes are short).
"""

from __future__ import annotations

from typing import Any

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

from sso.oidc.device_records import PendingDevice, format_user_code, normalise_user_code
from sso.oidc.scopes import scope_words
from sso.registry import registry
from sso.web.errors import error_response

bp = Blueprint("device", __name__)

MAX_CODE_INPUT = 32  # anything longer is not a user code; don't echo it back


def _typed_code() -> str:
    return (request.values.get("user_code") or "")[:MAX_CODE_INPUT]


def _to_login(code: str) -> Response:
    """Sign in first, then come back here with the code still filled in."""
    here = url_for("device.enter", user_code=code) if code else url_for("device.enter")
    return redirect(url_for("auth.login", next=here),
                    code=303 if request.method == "POST" else 302)


def _too_many(wait: int) -> Response:
    response = error_response(
        429, "Too many tries",
        "Too many wrong codes were entered. Wait a few minutes, then enter the code shown "
        "on your device again.", code="slow_down")
    response.headers["Retry-After"] = str(wait)
    return response


def _entry_page(code: str, error: str | None = None, status: int = 200) -> Response:
    response = make_response(render_template("device/enter.html", user_code=code,
                                             error=error))
    response.status_code = status
    return response


def _who() -> str:
    return str(current_user.profile.user_id)


def _checked_request() -> tuple[PendingDevice | None, Response | None]:
    """The pending request the submitted code names, or the page to answer instead:
    429 when over the guess limit, the entry form again for a wrong code."""
    user_id = _who()
    records = registry().devices
    wait = records.blocked_for(user_id)
    if wait:
        return None, _too_many(wait)
    typed = _typed_code()
    code = normalise_user_code(typed)
    pending = records.pending(code) if code else None
    if pending is None:
        if typed.strip():
            records.count_wrong(user_id)
        return None, _entry_page(typed, "That code is not valid, or it has expired. Check the "
                                 "code on your device and try again.", 400)
    return pending, None


def _refuse_if_no_access(pending: PendingDevice, client: Any) -> Response | None:
    """A person lacking the client's required roles cannot approve; the device is told no."""
    profile = current_user.profile
    if registry().provider.may_use(profile, client):
        return None
    registry().devices.decide(pending.user_code, approved=False, user_id=profile.user_id,
                            auth_time=int(session.get("auth_time", 0)))
    registry().provider.audit("device.denied", actor=profile.login, client=client.client_id,
                     reason="missing_role")
    return error_response(403, f"You don't have access to {client.name}",
                          f"{client.name} is open to people with one of these roles: "
                          f"{', '.join(client.required_roles)}. The device was told no; ask "
                          "an administrator if you need access.", code="access_denied")


@bp.get("/device")
def enter() -> Response:
    """The code entry form, prefilled from ``verification_uri_complete``'s ``user_code``.

    A GET never says whether a code is valid: only the (counted) POST does.
    """
    code = _typed_code()
    if not current_user.is_authenticated:
        return _to_login(code)
    return _entry_page(code)


def _checked_client(pending: PendingDevice) -> tuple[Any, Response | None]:
    """The client behind a request, or the page to answer when it is gone or off-limits."""
    client = registry().provider.clients.get(pending.client_id)
    if client is None:
        return None, error_response(400, "Unknown application",
                                    "The application that asked for this code is no longer "
                                    "registered with Keycard.", code="invalid_request")
    return client, _refuse_if_no_access(pending, client)


def _vetted() -> tuple[PendingDevice, Any] | Response:
    """Both POSTs start alike: signed in, a live code within the try limits, an app the
    person may use. Returns the request and its client, or the page to answer instead."""
    if not current_user.is_authenticated:
        return _to_login(_typed_code())
    pending, answer = _checked_request()
    if pending is None:
        return answer or _entry_page(_typed_code())
    client, answer = _checked_client(pending)
    if answer is not None:
        return answer
    return pending, client


@bp.post("/device")
def confirm() -> Response:
    """After a valid code: which app asks for what, and Approve / Deny."""
    vetted = _vetted()
    if not isinstance(vetted, tuple):
        return vetted
    pending, client = vetted
    scopes = set(pending.scope.split())
    words = scope_words(scopes)
    return make_response(render_template("device/confirm.html", client=client, scopes=words,
                                         user_code=format_user_code(pending.user_code)))


@bp.post("/device/decision")
def decision() -> Response:
    """Approve or deny (CSRF-protected like every form); answers 303."""
    vetted = _vetted()
    if not isinstance(vetted, tuple):
        return vetted
    pending, client = vetted
    profile = current_user.profile
    approved = request.form.get("decision") == "approve"
    if not registry().devices.decide(pending.user_code, approved=approved,
                                   user_id=profile.user_id,
                                   auth_time=int(session.get("auth_time", 0))):
        return _entry_page("", "That code was already used, or it has expired.", 400)
    registry().provider.audit("device.approved" if approved else "device.denied",
                              actor=profile.login, client=client.client_id,
                              scopes=sorted(pending.scope.split()))
    return redirect(url_for("device.done", result="approved" if approved else "denied"),
                    code=303)


@bp.get("/device/done")
def done() -> Response:
    approved = request.args.get("result") == "approved"
    return make_response(render_template("device/done.html", approved=approved))


@bp.get("/device/cli-client")
def cli_client() -> Response:
    """The id of the public device client ``sso login`` uses when given none: a public
    client's id is no secret (every copy of a CLI carries it), and serving it saves every
    person a configuration step."""
    client = registry().clients.default_device_client()
    if client is None:
        response = jsonify(error="not_found", error_description=(
            "No default device client: an admin registers one with "
            "`sso clients create --device`."))
        response.status_code = 404
        return response
    return jsonify(client_id=client.client_id, name=client.name)
