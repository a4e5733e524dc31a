"""RFC 8628 device authorization grant: Authlib's endpoint and grant, Keycard's storage
(:mod:`sso.oidc.device_records`).

Authlib ships the protocol (``DeviceAuthorizationEndpoint``, ``DeviceCodeGrant``) and
leaves storage to the application; it also never invalidates a device code after
issuing tokens. So every poll here is one Lua script that reads the record, enforces
the polling interval (growing it by 5 s on ``slow_down``, §3.5) and flips approved →
used atomically: tokens come out exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authlib.common.urls import add_params_to_uri
from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from authlib.oauth2.rfc8628.errors import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)

from sso.crypto import new_secret
from sso.oidc.device_records import (
    DEVICE_CODE_GRANT,
    DEVICE_CODE_TTL,
    POLL_INTERVAL,
    DeviceRecords,
    new_user_code,
    normalise_user_code,
)
from sso.oidc.grants import CLIENT_AUTH_METHODS, OpenIDCode

if TYPE_CHECKING:
    from sso.oidc.server import KeycardServer, Provider

class DeviceAuthorization(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    """``/device_authorization`` (RFC 8628 §3.1–3.2)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS
    EXPIRES_IN = DEVICE_CODE_TTL
    INTERVAL = POLL_INTERVAL

    def __init__(self, server: KeycardServer, records: DeviceRecords,
                 interval: int = POLL_INTERVAL) -> None:
        super().__init__(server)
        self.records = records
        self.INTERVAL = interval  # SSO_DEVICE_POLL_INTERVAL

    def create_endpoint_response(self, request: Any) -> tuple[int, dict[str, Any], Any]:
        """Authlib's, plus what it leaves out: the client must be registered for this
        grant, the scope must be the client's, and a user code is never handed out twice
        while live (Authlib would overwrite whatever its storage hook does)."""
        client = self.authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT):
            raise UnauthorizedClientError("This client may not use the device grant.")
        scope = request.payload.scope or ""
        self.server.validate_requested_scope(scope)
        requested = scope_to_list(scope) or []
        if not set(requested) <= set(client.scopes):
            raise InvalidScopeError(
                f"This client may only ask for: {' '.join(client.scopes) or 'nothing'}.")
        scope = " ".join(dict.fromkeys(requested))
        for _ in range(5):
            device_code, user_code = self.generate_device_code(), self.generate_user_code()
            if self.records.create(device_code, normalise_user_code(user_code) or "",
                                   client.get_client_id(), scope, expires_in=self.EXPIRES_IN,
                                   interval=self.INTERVAL):
                break
        else:  # five live collisions in a row: 2.5e10 codes, so something else is wrong
            raise TemporarilyUnavailableError("Could not allocate a user code; try again.")
        verification_uri = self.get_verification_uri()
        data = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": add_params_to_uri(verification_uri,
                                                           [("user_code", user_code)]),
            "expires_in": self.EXPIRES_IN,
            "interval": self.INTERVAL,
        }
        return 200, data, default_json_headers

    def generate_device_code(self) -> str:
        return new_secret(32)  # 256 bits (RFC 8628 §5.2 needs it unguessable)

    def generate_user_code(self) -> str:
        return new_user_code()

    def get_verification_uri(self) -> str:
        return f"{self.server.provider.issuer}/device"


class TemporarilyUnavailableError(OAuth2Error):  # type: ignore[misc]
    """RFC 6749 §4.1.2.1's ``temporarily_unavailable``, as a JSON answer."""

    error = "temporarily_unavailable"
    status_code = 503


@dataclass
class DeviceSignIn:
    """What the OpenID extension reads from "the authorization code": here, the approval."""

    auth_time: int

    def get_nonce(self) -> None:
        return None

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["github"]


class DeviceCredential:
    """A device request as Authlib's ``DeviceCredentialMixin`` sees it."""

    def __init__(self, client_id: str, scope: str) -> None:
        self.client_id = client_id
        self.scope = scope

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return False  # checked atomically by the poll


class DeviceCodeGrant(_DeviceCodeGrant):  # type: ignore[misc]
    """Token-endpoint polling (RFC 8628 §3.4–3.5).

    Authlib's ``validate_token_request`` reads the credential, then the user's decision,
    then the polling rate in separate storage calls and never invalidates the code; ours
    does all of it in one atomic poll, so of two polls after approval exactly one gets
    tokens and the other ``invalid_grant``.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        device_code = self.request.payload.data.get("device_code")
        if not device_code:
            raise InvalidRequestError("Missing 'device_code'.")
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("This client may not use the device grant.")
        records = self.server.provider.devices
        record = records.peek(device_code)
        status, extra = records.poll(device_code, client.get_client_id())
        if status == "pending":
            raise AuthorizationPendingError()
        if status == "slow_down":
            raise SlowDownError(f"Polling too fast: wait {extra[0]} seconds between polls.")
        if status == "expired":
            raise ExpiredTokenError("The device code expired; start again.")
        if status == "denied":
            raise AccessDeniedError("The request was denied.")
        if status == "used":
            raise InvalidGrantError("This device code was already used.")
        if status != "approved" or record is None:
            raise InvalidGrantError("Unknown device code.")
        p: Provider = self.server.provider
        auth_time = int(extra[1])
        subject = p.subject(extra[0], auth_time=auth_time, sid="", client=client)
        if subject is None:  # deprovisioned, or lost the client's required roles since
            raise AccessDeniedError("Your access to this application has ended.")
        subject.grant_id = p.records.new_grant_id()
        self.request.user = subject
        self.request.client = client
        self.request.credential = DeviceCredential(record["c"], record.get("s", ""))
        self.request.authorization_code = DeviceSignIn(auth_time)


def register_device_flow(server: KeycardServer, provider: Provider, interval: int) -> None:
    """Wire the endpoint and the grant (with ID tokens) to the provider's device records;
    ``interval`` is the seconds devices wait between polls (SSO_DEVICE_POLL_INTERVAL)."""
    server.register_endpoint(DeviceAuthorization(server, provider.devices, interval))
    server.register_grant(DeviceCodeGrant, [OpenIDCode(provider.issuer, provider.keys)])
