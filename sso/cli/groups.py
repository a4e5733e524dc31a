"""The command groups that work on an app's services, registered by the app factory."""

from __future__ import annotations

from flask import Flask

from sso.cli.audit import audit_group
from sso.cli.backup import backup_command, restore_command
from sso.cli.clients import clients_group
from sso.cli.doctor import doctor_command
from sso.cli.keys import keys_group
from sso.cli.roles import roles_group
from sso.cli.sessions import sessions_group
from sso.cli.users import users_group
from sso.cli.webhooks import webhooks_group


def init_app(app: Flask) -> None:
    for group in (sessions_group, roles_group, audit_group, clients_group, keys_group,
                  backup_command, restore_command, webhooks_group, users_group):
        app.cli.add_command(group)
    app.cli.add_command(doctor_command)
