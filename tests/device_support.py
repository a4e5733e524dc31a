"""Helpers for the device-grant tests (OIDC, CLI, browser): register a device client,
start a device request, poll, and answer on the ``/device`` page over HTTP."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from tests.support import csrf_token, form_with

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SSO = str(Path(sys.executable).parent / "sso")  # the console script, as people run it
CODE_LINE = re.compile(r"open (\S+) and enter the code: ([A-Z]{4}-[A-Z]{4})")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a person running ``sso`` in a terminal: none of the server's
    SSO_* settings, and a home (``~/.config/keycard``) of the test's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SSO_") and k != "XDG_CONFIG_HOME"}
    env.update(PYTHONUNBUFFERED="1", HOME=str(home), **extra)
    return env


def register_device_client(keycard: Any, **fields: Any) -> Any:
    """A public CLI client (device grant + refresh), as `sso clients create --public` makes."""
    fields.setdefault("name", "Deploy CLI")
    fields.setdefault("grant_types", [DEVICE_GRANT, "refresh_token"])
    fields.setdefault("public", True)
    client, _ = keycard.services.clients.create(**fields)
    return client


def start_device(keycard_url: str, client_id: str, scope: str = "openid profile email",
                 auth: Any = None) -> requests.Response:
    data = {"scope": scope} if scope else {}
    if auth is None:
        data["client_id"] = client_id
    return requests.post(f"{keycard_url}/device_authorization", data=data, auth=auth,
                         timeout=10)


def poll(keycard_url: str, client_id: str, device_code: str,
         auth: Any = None) -> requests.Response:
    data = {"grant_type": DEVICE_GRANT, "device_code": device_code}
    if auth is None:
        data["client_id"] = client_id
    return requests.post(f"{keycard_url}/token", data=data, auth=auth, timeout=10)


def enter_code(http: requests.Session, keycard_url: str, typed: str) -> requests.Response:
    """Open /device (signed in) and submit ``typed`` in its form; returns the next page."""
    page = http.get(f"{keycard_url}/device", timeout=10)
    assert page.status_code == 200, page.text[:300]
    form = form_with(page.text, "/device")
    return http.post(urljoin(page.url, form.action), data=dict(form.fields, user_code=typed),
                     allow_redirects=False, timeout=10)


def decide(http: requests.Session, confirm_page: requests.Response,
           decision: str = "approve") -> requests.Response:
    """Press Approve (or Deny) on the confirmation page; returns the 303."""
    assert confirm_page.status_code == 200, confirm_page.text[:300]
    form = form_with(confirm_page.text, "/device/decision")
    assert form.fields["csrf_token"] == csrf_token(confirm_page.text)
    return http.post(urljoin(confirm_page.url, form.action),
                     data=dict(form.fields, decision=decision), allow_redirects=False,
                     timeout=10)


def answer_device(http: requests.Session, keycard_url: str, user_code: str,
                  decision: str = "approve") -> requests.Response:
    response = decide(http, enter_code(http, keycard_url, user_code), decision)
    assert response.status_code == 303, response.text[:300]
    return response
