"""WSGI entry for the bench: ``gunicorn bench.wsgi:app``, configured only from ``SSO_*``
variables of the environment (never from a ``.env`` file lying in the working directory)."""

import os

from sso import create_app

app = create_app({k: v for k, v in os.environ.items() if k.startswith("SSO_")})
