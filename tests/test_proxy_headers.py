"""Finding 6 (issue #11): the client's address behind a reverse proxy.

``SSO_TRUSTED_PROXY_HOPS=n`` believes the last ``n`` entries of ``X-Forwarded-For``
(Werkzeug's ``ProxyFix``); with the default 0 a client-sent header changes nothing.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.support import sign_in

CLIENT_IP = "203.0.113.7"


def _signed_in_from(make_keycard: Any, hops: str) -> tuple[Any, str, str]:
    keycard = make_keycard(SSO_TRUSTED_PROXY_HOPS=hops)
    http = requests.Session()
    http.headers["X-Forwarded-For"] = CLIENT_IP  # as the proxy in front would add it
    sign_in(http, keycard.url, "bob")
    http.close()
    [event] = [e for e in keycard.services.audit.recent() if e["event"] == "signin.success"]
    [session] = keycard.services.sessions.list_for_user("1002")
    return keycard, event["ip"], session.ip


def test_finding_6_one_trusted_hop_gives_audit_and_sessions_the_client_ip(make_keycard):
    _, audit_ip, session_ip = _signed_in_from(make_keycard, "1")
    assert audit_ip == CLIENT_IP
    assert session_ip == CLIENT_IP


def test_finding_6_without_trusted_hops_x_forwarded_for_is_ignored(make_keycard):
    _, audit_ip, session_ip = _signed_in_from(make_keycard, "0")
    assert audit_ip == "127.0.0.1"
    assert session_ip == "127.0.0.1"
