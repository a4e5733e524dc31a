"""Form bodies at the OAuth endpoints, read by Keycard's direct url-encoded path
(sso.web.fastpath.KeycardRequest) or, for anything unusual, by Werkzeug's: each shape gets a
proper answer, and a malformed one a 4xx, never a 500."""

from __future__ import annotations

import base64
import http.client
import socket
from urllib.parse import urlsplit

import pytest
import requests

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def service(keycard):
    client, secret = keycard.services.clients.create(
        name="Body checker", grant_types=["client_credentials"], scopes=["roles"],
        roles=["deployer"])
    return client.client_id, str(secret)


def post(keycard, service, body: bytes | str, content_type: str = FORM,
         path: str = "/token") -> requests.Response:
    return requests.post(keycard.url + path, data=body, auth=service, timeout=10,
                         headers={"Content-Type": content_type})


@pytest.mark.parametrize("content_type", [FORM, FORM + "; charset=utf-8"])
def test_url_encoded_bodies_with_or_without_a_charset_are_read(keycard, service, content_type):
    response = post(keycard, service, "grant_type=client_credentials&scope=roles",
                    content_type)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    info = post(keycard, service, f"token={token}&token_type_hint=access_token", content_type,
                "/introspect")
    assert info.status_code == 200 and info.json()["active"] is True


def test_percent_encoding_and_plus_signs_decode_like_werkzeug(keycard, service):
    # "roles" spelled with escapes; a stray % is kept, not an error.
    response = post(keycard, service, "grant_type=client%5Fcredentials&scope=%72oles")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "roles"
    odd = post(keycard, service, "grant_type=client_credentials&scope=%zz+roles")
    assert odd.status_code == 400 and odd.json()["error"] == "invalid_scope"


def test_body_that_is_not_utf8_is_400(keycard, service):
    response = post(keycard, service, b"grant_type=client_credentials&scope=\xff\xfe")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_too_many_fields_is_400(keycard, service):
    body = "grant_type=client_credentials&" + "&".join(f"f{i}=x" for i in range(1001))
    response = post(keycard, service, body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def raw_post(keycard, service, length: int, body: bytes,
             extra: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A POST whose Content-Length says ``length`` whatever the body is."""
    connection = http.client.HTTPConnection(urlsplit(keycard.url).netloc, timeout=10)
    try:
        connection.putrequest("POST", "/token")
        auth = base64.b64encode(f"{service[0]}:{service[1]}".encode()).decode()
        for name, value in {"Content-Type": FORM, "Content-Length": str(length),
                            "Authorization": f"Basic {auth}", **(extra or {})}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        if length > len(body):
            connection.sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_body_declared_over_the_limit_is_413_before_it_is_read(keycard, service):
    status, _ = raw_post(keycard, service, 2 * 1024 * 1024, b"grant_type=client_credentials")
    assert status == 413


def test_body_shorter_than_its_content_length_is_400(keycard, service):
    status, body = raw_post(keycard, service, 500, b"grant_type=client_credentials")
    assert status == 400, body


def test_chunked_bodies_take_werkzeugs_way(keycard, service):
    def chunks():
        yield b"grant_type=client_"
        yield b"credentials&scope=roles"

    response = requests.post(keycard.url + "/token", data=chunks(), auth=service, timeout=10,
                             headers={"Content-Type": FORM})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200, response.text


def test_multipart_bodies_take_werkzeugs_way(keycard, service):
    response = requests.post(keycard.url + "/token", auth=service, timeout=10,
                             files={"grant_type": (None, "client_credentials")})
    assert response.status_code == 200, response.text
