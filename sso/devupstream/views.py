"""HTTP surface of the development upstream: GitHub's OAuth web flow and a REST API subset.

Paths, status codes, headers and body shapes follow github.com / GitHub Enterprise
(REST API under ``/api/v3``), including the awkward parts a real connector must cope
with: token-endpoint errors returned with HTTP 200, form-encoded token responses unless
JSON is asked for, ``Link``-header pagination, and 404 (not 403) for missing scopes.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
)
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from .state import (
    FAULT_KINDS,
    PKCE_METHODS,
    RATE_LIMIT,
    AccessToken,
    Fault,
    Org,
    Team,
    TokenExchangeError,
    UpstreamState,
    User,
    parse_scopes,
)

bp = Blueprint("devupstream", __name__)

API = "/api/v3"
DOCS_URL = "https://docs.github.com/rest"
DEFAULT_API_VERSION = "2022-11-28"
EMAIL_SCOPES = frozenset({"user", "user:email"})
ORG_READ_SCOPES = frozenset({"read:org", "write:org", "admin:org"})
_TROUBLE = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-"
TOKEN_ERRORS = {
    "bad_verification_code": "The code passed is incorrect or expired.",
    "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
    "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for "
    "this application.",
}
DENIAL = {
    "error": "access_denied",
    "error_description": "The user has denied your application access.",
    "error_uri": _TROUBLE + "authorization-request-errors/#access-denied",
}
SAML_MESSAGE = (
    "Resource protected by organization SAML enforcement. You must grant your "
    "Personal Access token access to this organization."
)
RATE_DOC = DOCS_URL + "/overview/rate-limits-for-the-rest-api"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self' http: https:"
)
_SIMPLE_USER_KEYS = frozenset({"login", "id", "node_id", "avatar_url", "url", "html_url", "type"})
_CREATED = "2020-01-01T00:00:00Z"
AVATAR_COLOURS = ("#6f42c1", "#0969da", "#1a7f37", "#bf3989", "#bc4c00", "#57606a")


def _state() -> UpstreamState:
    state: UpstreamState = current_app.extensions["devupstream"]
    return state


# -- response helpers -------------------------------------------------------------------
def _json(body: Any, status: int = 200) -> Response:
    """GitHub always labels JSON with an explicit charset, so we do too."""
    return Response(json.dumps(body), status, content_type="application/json; charset=utf-8")


def _api_error(status: int, message: str, doc: str = DOCS_URL) -> Response:
    return _json({"message": message, "documentation_url": doc}, status)


def _not_found() -> Response:
    return _api_error(404, "Not Found")


def _abs(path: str) -> str:
    """Absolute URL on whatever host the client used to reach us."""
    return request.host_url.rstrip("/") + path


def _node_id(kind: str, ident: int) -> str:
    """Legacy-format GraphQL node id (base64 of e.g. ``04:User1001``), like GitHub's."""
    return base64.b64encode(f"0{len(kind) + 2}:{kind}{ident}".encode()).decode()


def _html_error(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("devupstream/authorize.html", error=message, title=title), status


def _token_payload(body: dict[str, str], status: int = 200) -> Response:
    """JSON only when asked for; GitHub's default is a form-encoded body."""
    if "application/json" in request.headers.get("Accept", ""):
        return _json(body, status)
    return Response(
        urlencode(body), status, content_type="application/x-www-form-urlencoded; charset=utf-8"
    )


def _token_error(code: str) -> Response:
    description = TOKEN_ERRORS.get(code, "The request failed.")
    uri = _TROUBLE + "oauth-app-access-token-request-errors/#" + code.replace("_", "-")
    # Deliberately HTTP 200: GitHub reports token-endpoint errors in the body only.
    return _token_payload({"error": code, "error_description": description, "error_uri": uri})


def _append_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    extra = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


# -- authentication, faults and common headers ------------------------------------------
def _authenticated() -> tuple[AccessToken, User] | None:
    """Resolve the request's token once per request (``Bearer`` or legacy ``token``)."""
    if "auth" not in g:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() in {"bearer", "token"} and value.strip()
        g.auth = _state().token_info(value.strip()) if ok else None
    auth: tuple[AccessToken, User] | None = g.auth
    return auth


def _require_auth() -> tuple[AccessToken, User]:
    auth = _authenticated()
    if auth is None:
        missing = not request.headers.get("Authorization")
        abort(_api_error(401, "Requires authentication" if missing else "Bad credentials"))
    return auth


def _fault_response(fault: Fault) -> Response | None:
    """Render one injected fault the way GitHub (or its load balancer) would."""
    params = fault.params
    if fault.kind == "timeout":
        time.sleep(float(params.get("delay", 3.0)))
        return None
    if fault.kind == "unauthorized":
        return _api_error(401, "Bad credentials")
    if fault.kind == "rate_limit":
        auth = _authenticated()
        who = f"user ID {auth[1].id}" if auth else str(request.remote_addr)
        resp = _api_error(403, f"API rate limit exceeded for {who}.", RATE_DOC)
        resp.headers["X-RateLimit-Remaining"] = "0"
        resp.headers["X-RateLimit-Used"] = str(RATE_LIMIT)
        resp.headers["X-RateLimit-Reset"] = str(int(time.time()) + int(params.get("reset_in", 600)))
        return resp
    if fault.kind == "secondary_rate_limit":
        message = "You have exceeded a secondary rate limit. Please wait a few minutes."
        resp = _api_error(429, message, RATE_DOC + "#about-secondary-rate-limits")
        resp.headers["Retry-After"] = str(params.get("retry_after", 60))
        return resp
    if fault.kind == "saml":
        sso = _abs(f"/orgs/{params.get('org', 'acme')}/sso")
        ticket = params.get("authorization_request", "abc123")
        resp = _api_error(403, SAML_MESSAGE)
        resp.headers["X-GitHub-SSO"] = f"required; url={sso}?authorization_request={ticket}"
        return resp
    if fault.kind == "server_error":
        status = int(params.get("status", 502))
        return Response("<html>Unicorn!</html>", status, mimetype="text/html")
    if fault.kind == "redirect":  # GitHub's answer for a moved resource
        target = str(params.get("location", "https://elsewhere.example/moved"))
        resp = jsonify(message="Moved Permanently", url=target,
                       documentation_url="https://docs.github.com/rest")
        resp.status_code = int(params.get("status", 301))
        resp.headers["Location"] = target
        return resp
    if fault.kind == "token_error":
        return _token_error(str(params.get("error", "bad_verification_code")))
    return None


@bp.before_app_request
def _record_and_inject() -> Response | None:
    """Log every request for tests, then apply the first matching fault (not on /_dev)."""
    state = _state()
    api = request.path.startswith("/api/")
    state.record_request(request.method, request.path, dict(request.headers) if api else None)
    if request.path.startswith("/_dev"):
        return None
    fault = state.take_fault(request.path)
    return _fault_response(fault) if fault else None


@bp.after_app_request
def _common_headers(resp: Response) -> Response:
    """Rate-limit and version headers on every API answer; a strict CSP on web pages."""
    if not request.path.startswith(API + "/") and request.path != API:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        return resp
    auth = _authenticated()
    key = f"user:{auth[0].user_id}" if auth else f"ip:{request.remote_addr}"
    used, reset = _state().note_api_call(key)
    headers = resp.headers  # setdefault: an injected rate_limit fault has set its own
    limits = {"Limit": RATE_LIMIT, "Remaining": RATE_LIMIT - used, "Reset": reset, "Used": used}
    for name, value in (limits | {"Resource": "core"}).items():
        headers.setdefault(f"X-RateLimit-{name}", str(value))
    version = request.headers.get("X-GitHub-Api-Version", DEFAULT_API_VERSION)
    headers["X-GitHub-Api-Version-Selected"] = version
    headers.setdefault("X-GitHub-Media-Type", "github.v3; format=json")
    if auth:
        headers.setdefault("X-OAuth-Scopes", ", ".join(auth[0].scopes))
    return resp


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _http_error(err: HTTPException) -> Any:
    """JSON ``Not Found`` under the API (GitHub answers 404 for wrong methods too)."""
    if request.path.startswith(API):
        return _not_found()
    return _html_error(err.code or 404, err.name, err.description or "")


# -- JSON shapes ----------------------------------------------------------------------
def _user_json(user: User) -> dict[str, Any]:
    """The authenticated-user shape; ``email`` is only the *public* address, as on GitHub."""
    api = _abs(f"{API}/users/{user.login}")
    avatar = _abs(user.avatar_url) if user.avatar_url.startswith("/") else user.avatar_url
    simple = {"login": user.login, "id": user.id, "node_id": _node_id("User", user.id)}
    simple |= {"avatar_url": avatar, "gravatar_id": "", "url": api, "type": "User"}
    simple |= {"html_url": _abs(f"/{user.login}"), "organizations_url": f"{api}/orgs"}
    full = simple | {"site_admin": False, "name": user.name, "email": user.public_email}
    full |= dict.fromkeys(("company", "location", "hireable", "bio", "twitter_username"))
    full |= dict.fromkeys(("public_repos", "public_gists", "followers", "following"), 0)
    return full | {"blog": "", "created_at": _CREATED, "updated_at": _CREATED}


def _org_json(org: Org) -> dict[str, Any]:
    api = _abs(f"{API}/orgs/{org.login}")
    body = {"login": org.login, "id": org.id, "node_id": _node_id("Organization", org.id)}
    body |= {"url": api, "repos_url": f"{api}/repos", "members_url": f"{api}/members{{/member}}"}
    return body | {"avatar_url": _abs(f"/avatars/{org.id}"), "description": org.description}


def _team_json(team: Team, *, nested: bool = False) -> dict[str, Any]:
    """Full team object; ``nested`` gives the "team-simple" used for ``parent``."""
    state = _state()
    org = state.org(team.org)
    assert org is not None  # teams cannot outlive their org in this model
    api = _abs(f"{API}/teams/{team.id}")
    body: dict[str, Any] = {"id": team.id, "node_id": _node_id("Team", team.id), "url": api}
    body |= {"html_url": _abs(f"/orgs/{org.login}/teams/{team.slug}"), "name": team.name}
    body |= {"slug": team.slug, "description": None, "privacy": "closed", "permission": "pull"}
    body |= {"notification_setting": "notifications_enabled", "repositories_url": f"{api}/repos"}
    body["members_url"] = f"{api}/members{{/member}}"
    if nested:
        return body
    parent = state.team(team.org, team.parent) if team.parent else None
    body["parent"] = _team_json(parent, nested=True) if parent else None
    return body | {"organization": _org_json(org)}


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        return default


def _paginate(items: list[dict[str, Any]]) -> Response:
    """Slice like GitHub (per_page default 30, max 100) and emit an absolute Link header."""
    per_page = _int_arg("per_page", 30)
    per_page = 30 if per_page < 1 else min(per_page, 100)
    page = max(_int_arg("page", 1), 1)
    last = max(1, math.ceil(len(items) / per_page))
    resp = _json(items[(page - 1) * per_page : page * per_page])

    def link(number: int, rel: str) -> str:
        query = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
        query.append(("page", str(number)))
        return f'<{request.base_url}?{urlencode(query)}>; rel="{rel}"'

    links = []
    if page > 1:
        links.append(link(page - 1, "prev"))
    if page < last:
        links += [link(page + 1, "next"), link(last, "last")]
    if page > 1:
        links.append(link(1, "first"))
    if links:
        resp.headers["Link"] = ", ".join(links)
    return resp


# -- OAuth web flow --------------------------------------------------------------------
def _authorize_problem(params: Any) -> tuple[str, int] | None:
    """Error page for an authorize request that cannot proceed (GET or POST alike)."""
    if not _state().client_known(params.get("client_id")):
        return _html_error(404, "Not Found", "No OAuth application is registered with that id.")
    parts = urlsplit(params.get("redirect_uri") or "")
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return _html_error(400, "Bad request", "The redirect_uri must be an absolute http(s) URL.")
    if (params.get("code_challenge_method") or "S256") not in PKCE_METHODS:
        return _html_error(400, "Bad request", "code_challenge_method must be S256 or plain.")
    return None


def _directory(selected: str = "") -> list[dict[str, Any]]:
    """Every account with its orgs and direct teams, for the picker and ``/_dev/``."""
    state = _state()
    return [
        {
            "login": u.login,
            "name": u.name,
            "initial": (u.name or u.login)[:1].upper(),
            "orgs": [o.login for o in state.orgs_for_user(u.id)],
            "teams": [f"{t.org}/{t.slug}" for t in state.teams_for_user(u.id)],
            "selected": u.login.lower() == selected.lower(),
        }
        for u in state.all_users()
    ]


@bp.get("/login/oauth/authorize")
def authorize_page() -> Any:
    """Account picker standing in for GitHub's login + consent screens."""
    problem = _authorize_problem(request.args)
    if problem:
        return problem
    hidden = [(k, v) for k, v in request.args.items(multi=True) if k not in {"login", "deny"}]
    return render_template(
        "devupstream/authorize.html",
        title="Sign in to GitHub (development upstream)",
        client_id=request.args["client_id"],
        scopes=parse_scopes(request.args.get("scope")),
        users=_directory(request.args.get("login", "")),
        hidden=hidden,
    )


@bp.post("/login/oauth/authorize")
def authorize_decide() -> Any:
    """Turn the picked account (or Cancel) into GitHub's redirect back to the client."""
    state, form = _state(), request.form
    problem = _authorize_problem(form)
    if problem:
        return problem
    client_id, redirect_uri = form["client_id"], form["redirect_uri"]
    extra = {"state": form["state"]} if "state" in form else {}
    if form.get("deny"):
        return redirect(_append_query(redirect_uri, DENIAL | extra), 302)
    user = state.user_by_login(form.get("login", ""))
    if user is None:
        return _html_error(400, "Unknown account", "Pick one of the listed accounts.")
    pkce = (form.get("code_challenge") or None, form.get("code_challenge_method") or None)
    code = state.create_code(client_id, redirect_uri, user.login, form.get("scope"), *pkce)
    return redirect(_append_query(redirect_uri, {"code": code, **extra}), 302)


@bp.post("/login/oauth/access_token")
def access_token() -> Response:
    """Code-for-token exchange; every outcome is HTTP 200, errors live in the body."""
    data: dict[str, Any] = dict(request.args.items())
    data.update(request.form.items())
    if request.is_json:
        data.update(request.get_json(silent=True) or {})
    client_id, secret = data.get("client_id"), data.get("client_secret")
    basic = request.authorization
    if basic is not None and basic.type == "basic":
        client_id = client_id or basic.username
        secret = secret or basic.password
    try:
        token = _state().exchange_code(
            client_id, secret, data.get("code"), data.get("redirect_uri"), data.get("code_verifier")
        )
    except TokenExchangeError as exc:
        return _token_error(str(exc.args[0]))
    return _token_payload(
        {"access_token": token.token, "token_type": "bearer", "scope": ",".join(token.scopes)}
    )


# -- REST API ---------------------------------------------------------------------------
@bp.get(API + "/user")
def api_user() -> Response:
    return _json(_user_json(_require_auth()[1]))


@bp.get(API + "/users/<login>")
def api_users(login: str) -> Response:
    """A public profile by login (an organisation's too, with ``type: Organization``).
    GitHub answers anonymous callers, a user's token, or an OAuth app's client id and
    secret as HTTP basic; wrong credentials of either kind are a 401."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            client_id, secret = "", ""
        if _state().clients.get(client_id) != secret or not client_id:
            return _api_error(401, "Bad credentials")
    elif scheme:
        _require_auth()
    state = _state()
    user = state.user_by_login(login)
    if user is not None:
        full = _user_json(user)
        return _json({k: v for k, v in full.items() if k != "email"}
                     | {"email": user.public_email})
    org = state.org(login)
    if org is None:
        return _not_found()
    return _json(_org_json(org) | {"type": "Organization", "html_url": _abs(f"/{org.login}")})


@bp.get(API + "/user/emails")
def api_user_emails() -> Response:
    token, user = _require_auth()
    if not EMAIL_SCOPES & set(token.scopes):
        return _not_found()
    return _paginate([asdict(e) for e in user.emails])  # email, primary, verified, visibility


@bp.get(API + "/user/orgs")
def api_user_orgs() -> Response:
    _, user = _require_auth()
    return _paginate([_org_json(o) for o in _state().orgs_for_user(user.id)])


@bp.get(API + "/user/teams")
def api_user_teams() -> Response:
    _, user = _require_auth()
    return _paginate([_team_json(t) for t in _state().teams_for_user(user.id)])


@bp.get(API + "/user/memberships/orgs/<org>")
def api_user_membership(org: str) -> Response:
    token, user = _require_auth()
    state = _state()
    found = state.org(org)
    membership = state.membership(org, user.id) if found else None
    if found is None or membership is None or not ORG_READ_SCOPES & set(token.scopes):
        return _not_found()
    (role, status), org_json = membership, _org_json(found)
    body: dict[str, Any] = {
        "url": f"{org_json['url']}/memberships/{user.login}",
        "state": status,
        "role": role,
    }
    body |= {"organization_url": org_json["url"], "organization": org_json}
    body["user"] = {k: v for k, v in _user_json(user).items() if k in _SIMPLE_USER_KEYS}
    return _json(body)


@bp.get(API + "/orgs/<org>/teams/<slug>")
def api_org_team(org: str, slug: str) -> Response:
    _, user = _require_auth()
    state = _state()
    team = state.team(org, slug)
    if team is None or state.membership(org, user.id) is None:
        return _not_found()  # GitHub hides teams of orgs you do not belong to
    return _json(_team_json(team))


# -- assets and development controls ------------------------------------------------------
@bp.get("/avatars/<int:ident>")
def avatar(ident: int) -> Response:
    """Generated SVG avatar (the initial on a colour), so pages need no external images."""
    state = _state()
    names = [u.name or u.login for u in state.all_users() if u.id == ident]
    names += [o.login for o in state.all_orgs() if o.id == ident]
    label = next(iter(names), None)
    if label is None:
        abort(404)
    colour = AVATAR_COLOURS[ident % len(AVATAR_COLOURS)]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">'
        f'<rect width="96" height="96" rx="48" fill="{colour}"/>'
        '<text x="48" y="63" font-family="sans-serif" font-size="44" text-anchor="middle" '
        f'fill="#fff">{escape(label[:1].upper())}</text></svg>'
    )
    return Response(svg, mimetype="image/svg+xml")


@bp.route("/_dev/faults", methods=["GET", "POST", "DELETE"])
def dev_faults() -> Response:
    """Fault control over HTTP for ``sso dev`` and manual poking (POST adds, DELETE clears)."""
    state = _state()
    if request.method == "DELETE":
        state.clear_faults()
        return Response(status=204)
    body = (request.get_json(silent=True) or {}) if request.method == "POST" else None
    try:
        if body is not None:
            args = (str(body.get("path", "/")), str(body.get("kind")), int(body.get("count", 1)))
            state.add_fault(*args, **dict(body.get("params") or {}))
    except (TypeError, ValueError) as exc:
        return _json({"message": str(exc), "kinds": sorted(FAULT_KINDS)}, 400)
    faults = [asdict(f) for f in state.pending_faults()]
    return _json({"faults": faults}, 200 if body is None else 201)


@bp.get("/_dev/")
def dev_index() -> Response:
    """JSON listing of the directory, handy when choosing whom to sign in as."""
    state = _state()
    teams = [asdict(t) for t in state.all_teams()]
    orgs = [asdict(o) for o in state.all_orgs()]
    return _json({"users": _directory(), "orgs": orgs, "teams": teams})


@bp.route("/_dev/members", methods=["GET", "POST"])
def dev_members() -> Any:
    """Remove (or add back) an org member, as an owner would on GitHub: webhooks follow."""
    state = _state()
    message = ""
    if request.method == "POST":
        org, login = request.form.get("org", ""), request.form.get("login", "")
        try:
            action = request.form.get("action")
            if action == "add":
                state.add_org_member(org, login)
                message = f"Added {login} to {org}."
            elif action == "remove-team":
                team_org, _, slug = request.form.get("team", "").partition("/")
                state.remove_team_member(team_org, slug, login)
                message = f"Removed {login} from team {team_org}/{slug}."
            else:
                state.remove_user_from_org(org, login)
                message = f"Removed {login} from {org}."
        except KeyError as exc:
            return _html_error(404, "Not found", str(exc))
    subscribed = bool(state.webhooks.subscriptions)
    return render_template("devupstream/members.html", people=_directory(), message=message,
                           subscribed=subscribed)


@bp.get("/_dev/hooks")
def dev_hooks() -> Response:
    """Webhook subscriptions and the deliveries made (status and answer of each)."""
    state = _state()
    subscriptions = [asdict(s) | {"secret": "[set]"} for s in state.webhooks.subscriptions]
    return _json({"subscriptions": subscriptions, "sent": list(state.webhooks.sent)})
