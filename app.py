"""WSGI entry point: ``granian --interface wsgi --factory app:create_app``,
``gunicorn 'app:create_app()'`` or ``flask --app app run``."""

from sso import create_app

__all__ = ["create_app"]
