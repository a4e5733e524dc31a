"""The services one app instance uses, built once by the factory (Warehouse-style lookup).

Views ask ``services()`` for what they need instead of importing globals, so a
test can stand up an app against its own Redis and upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from sso.accounts import Accounts
from sso.audit import Audit
from sso.config import Settings
from sso.crypto import Sealer
from sso.login.flow import SignInFlow
from sso.rules_store import RuleStore
from sso.sessions import SessionStore
from sso.storage import Store
from sso.upstream.base import Connector


@dataclass
class Services:
    settings: Settings
    store: Store
    sealer: Sealer
    connector: Connector
    sessions: SessionStore
    audit: Audit
    accounts: Accounts
    signin: SignInFlow
    rules: RuleStore


def services(app: Flask | None = None) -> Services:
    found: Services = (app or current_app).extensions["keycard"]
    return found
