"""GitHub-compatible development upstream.

A small Flask app that imitates github.com / GitHub Enterprise (OAuth web flow plus the
REST endpoints Keycard's GitHub connector reads) so the connector can be exercised over
real HTTP in tests and in ``sso dev`` without a GitHub account.  It deliberately imports
nothing else from ``sso``: it plays the *other side* of the wire.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from .state import Email, Org, Team, UpstreamState, User, load_demo_state
from .views import bp

__all__ = [
    "Email",
    "Org",
    "Team",
    "UpstreamState",
    "User",
    "create_upstream_app",
    "load_demo_state",
]

# templates/ and static/: inside the package in an installed wheel, at the top of the
# repository in a checkout (editable install).
_REPO_ROOT = next((p for p in Path(__file__).resolve().parents[1:3] if (p / "templates").is_dir()),
                  Path(__file__).resolve().parents[2])


def create_upstream_app(state: UpstreamState | None = None) -> Flask:
    """Build the upstream app around ``state`` (the bundled demo directory by default).

    The state object is shared, not copied, so a test can keep a reference and change
    memberships or inject faults while the server is running.
    """
    app = Flask(
        __name__,
        template_folder=str(_REPO_ROOT / "templates"),
        static_folder=str(_REPO_ROOT / "static"),
        static_url_path="/static",
    )
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    app.extensions["devupstream"] = state if state is not None else load_demo_state()
    app.register_blueprint(bp)
    return app
