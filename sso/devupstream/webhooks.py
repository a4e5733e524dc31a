"""Organisation webhooks of the development upstream: what GitHub POSTs when membership changes.

Deliveries carry GitHub's headers (``X-GitHub-Event``, ``X-GitHub-Delivery``,
``X-Hub-Signature-256``) and body shapes, trimmed to the fields a receiver reads. Each is
sent from its own thread, so a slow receiver never blocks a change to the directory, and
kept in :attr:`OrgWebhooks.sent` for tests and the ``/_dev/hooks`` page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

TIMEOUT_SECONDS = 10  # GitHub's own delivery timeout


@dataclass(frozen=True)
class Subscription:
    org: str  # lower-case login
    url: str
    secret: str


class OrgWebhooks:
    """Subscriptions per organisation and the deliveries made to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.subscriptions: list[Subscription] = []
        self.sent: list[dict[str, Any]] = []

    def subscribe(self, org: str, url: str, secret: str) -> None:
        with self._lock:
            self.subscriptions.append(Subscription(org.lower(), url, secret))

    def emit(self, org: str, event: str, payload: dict[str, Any]) -> None:
        """Deliver ``event`` to every subscription of ``org``, in the background."""
        with self._lock:
            targets = [s for s in self.subscriptions if s.org == org.lower()]
        for target in targets:
            threading.Thread(target=self._deliver, args=(target, event, payload),
                             daemon=True).start()

    def _deliver(self, target: Subscription, event: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        delivery = str(uuid.uuid4())
        signature = hmac.new(target.secret.encode(), body, hashlib.sha256).hexdigest()
        record: dict[str, Any] = {"delivery": delivery, "event": event,
                                  "action": payload.get("action"), "url": target.url,
                                  "time": time.time()}
        try:
            answer = requests.post(target.url, data=body, timeout=TIMEOUT_SECONDS, headers={
                "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/dev",
                "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": f"sha256={signature}"})
            record.update(status=answer.status_code, response=answer.text[:500])
        except requests.RequestException as exc:
            record.update(status=None, response=str(exc))
        with self._lock:
            self.sent.append(record)


def user_json(user_id: int, login: str) -> dict[str, Any]:
    return {"login": login, "id": user_id, "type": "User", "site_admin": False}


def org_json(org_id: int, login: str) -> dict[str, Any]:
    return {"login": login, "id": org_id}
