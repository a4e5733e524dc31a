"""The upstream sign-in flow: state, browser binding and PKCE around a connector.

RFC 9700 §2.1 / §4.7: ``state`` (256 bits) is single-use (GETDEL), lives ten
minutes, and is bound to the browser that started the flow by a second random
value held in an HttpOnly cookie, so a callback replayed, forged or carried to
another browser is refused. PKCE S256 protects the upstream code as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sso.crypto import hash_secret, new_secret, same
from sso.storage import Store
from sso.upstream.base import Connector, Identity, UpstreamToken

# Refusals anyone can cause without starting a sign-in (no state, or one never issued or
# already used): the callback counts them in a metric instead of the audit stream.


# What a person can act on, whether the state is missing, unknown, expired or replayed.
EXPIRED = "This sign-in link has expired or was already used — start again."


class SignInRefused(Exception):
    """The callback cannot be trusted; ``reason`` is the audit code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Started:
    redirect_url: str
    binding: str  # goes into the browser's cookie


@dataclass(frozen=True)
class Pending:
    """What the callback recovers from a consumed state."""

    verifier: str
    next_url: str
    started_at: float


class SignInFlow:
    def __init__(self, store: Store, connector: Connector, callback_url: str, ttl: int) -> None:
        self.store = store
        self.connector = connector
        self.callback_url = callback_url
        self.ttl = ttl

    def begin(self, next_url: str, login_hint: str | None = None, *,
              select_account: bool = False) -> Started:
        state, binding, verifier = new_secret(32), new_secret(32), new_secret(48)
        record = {"b": hash_secret(binding), "v": verifier, "n": next_url, "t": time.time()}
        self.store.put_json(
            self.store.keys.login_state(hash_secret(state)), record, self.ttl, only_new=True
        )
        url = self.connector.login_url(
            redirect_uri=self.callback_url, state=state, code_verifier=verifier,
            login_hint=login_hint, select_account=select_account,
        )
        return Started(redirect_url=url, binding=binding)

    def consume(self, state: str | None, binding: str | None) -> Pending:
        """Take the state out of Redis (atomically) and check it belongs to this browser."""
        if not state or len(state) > 128:
            raise SignInRefused("state_missing", EXPIRED)
        record = self.store.consume_json(self.store.keys.login_state(hash_secret(state)))
        if record is None:
            raise SignInRefused("state_unknown", EXPIRED)
        if not binding or not same(hash_secret(binding), record["b"]):
            raise SignInRefused(
                "state_foreign_browser",
                "This sign-in was started in another browser, so it was refused. "
                "Please start again here.",
            )
        return Pending(verifier=record["v"], next_url=record["n"], started_at=record["t"])

    def finish(self, pending: Pending, code: str) -> tuple[Identity, UpstreamToken]:
        return self.connector.handle_callback(
            code=code, redirect_uri=self.callback_url, code_verifier=pending.verifier
        )
