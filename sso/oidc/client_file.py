"""Clients as a YAML file (``sso clients export`` / ``import``): configuration as code.

The file never holds a secret: export leaves them out, import refuses them. Import
validates the whole file against what is stored before anything is written (the
registry then applies it in one transaction); a client named by ``client_id`` is
updated with the fields the file gives, any other entry is a new client.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from sso.crypto import hash_secret, new_secret
from sso.oidc.clients import CLIENT_ID, Client, ClientError, new_client_id, validate
from sso.yamlfile import compose

# In the order a person reads them; ``client_id`` and ``public`` first.
FIELDS = ("client_id", "name", "public", "redirect_uris", "post_logout_redirect_uris",
          "grant_types", "scopes", "required_roles", "roles", "audiences", "trusted",
          "home_url", "require_pkce", "id_token_alg", "access_token_ttl", "refresh_idle_ttl",
          "refresh_absolute_ttl", "backchannel_logout_uri",
          "backchannel_logout_session_required")
SECRET_KEYS = ("client_secret", "secret_hash", "secret")
HEADER = ("# Keycard clients: `sso clients import FILE` creates the entries without a known\n"
          "# client_id and updates the others. Secrets are never exported.\n")


@dataclass(frozen=True)
class ClientChange:
    """One entry of the file: a new client (``before is None``) or an existing one."""

    after: Client
    before: Client | None
    fields: tuple[str, ...]  # what an update changes (empty: nothing)
    line: int


@dataclass(frozen=True)
class ImportPlan:
    changes: list[ClientChange]
    # New confidential clients' secrets, by client_id: printed once after the import.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def created(self) -> list[ClientChange]:
        return [c for c in self.changes if c.before is None]

    @property
    def updated(self) -> list[ClientChange]:
        return [c for c in self.changes if c.before is not None and c.fields]

    @property
    def unchanged(self) -> list[ClientChange]:
        return [c for c in self.changes if c.before is not None and not c.fields]

    @property
    def empty(self) -> bool:
        return not self.created and not self.updated


def export_entry(client: Client) -> dict[str, Any]:
    data = client.to_dict()
    return {name: data[name] for name in FIELDS}


def export_yaml(clients: list[Client]) -> str:
    body = yaml.safe_dump({"clients": [export_entry(c) for c in clients]}, sort_keys=False,
                          default_flow_style=False, allow_unicode=True)
    return HEADER + body


def plan_import(text: str, current: dict[str, Client]) -> ImportPlan:
    """Every entry of ``text`` checked against ``current`` (client_id → client);
    :class:`ClientError` names the line of the first problem. Nothing is written."""
    root = compose(text, ClientError)
    if root is None:
        return ImportPlan([])
    if not isinstance(root, yaml.MappingNode):
        raise ClientError(f"line {root.start_mark.line + 1}: expected a mapping with a "
                          "'clients' list")
    for key, _ in root.value:
        if key.value != "clients":
            raise ClientError(f"line {key.start_mark.line + 1}: unknown key {key.value!r}")
    seq = next((v for k, v in root.value if k.value == "clients"), None)
    if seq is None or (isinstance(seq, yaml.ScalarNode) and seq.value in ("", "null", "~")):
        return ImportPlan([])
    if not isinstance(seq, yaml.SequenceNode):
        raise ClientError(f"line {seq.start_mark.line + 1}: 'clients' must be a list")
    changes: list[ClientChange] = []
    secrets: dict[str, str] = {}
    seen: dict[str, int] = {}
    for node in seq.value:
        change, secret = _entry(node, current)
        line, client_id = change.line, change.after.client_id
        if client_id in seen:
            raise ClientError(f"line {line}: client_id {client_id} is also on line "
                              f"{seen[client_id]}")
        seen[client_id] = line
        if secret is not None:
            secrets[client_id] = secret
        changes.append(change)
    return ImportPlan(changes, secrets)


def _entry(node: yaml.Node, current: dict[str, Client]) -> tuple[ClientChange, str | None]:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise ClientError(f"line {line}: each client is a mapping like "
                          "{name: Wiki, redirect_uris: [https://wiki.example/callback]}")
    data: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"line {key_node.start_mark.line + 1}: "
        if key in SECRET_KEYS:
            raise ClientError(f"{where}secrets are never imported: a new client gets one, "
                              "printed once; `sso clients rotate-secret ID` replaces one")
        if key not in FIELDS:
            raise ClientError(f"{where}unknown key {key!r} (expected {', '.join(FIELDS)})")
        data[key] = yaml.safe_load(yaml.serialize(value_node))
    client_id = data.pop("client_id", None)
    public = data.pop("public", None)
    if public is not None and not isinstance(public, bool):
        raise ClientError(f"line {line}: public must be true or false")
    if client_id is not None and (not isinstance(client_id, str)
                                  or not CLIENT_ID.fullmatch(client_id)):
        raise ClientError(f"line {line}: client_id {client_id!r} is not a client id "
                          "(1-64 letters, digits, '-' or '_')")
    label = f"line {line} ({data.get('name') or client_id or 'unnamed client'})"
    before = current.get(client_id) if client_id else None
    try:
        if before is not None:
            if public is not None and public != before.public:
                kind = "public" if before.public else "confidential"
                raise ClientError(f"client {client_id} is {kind}; a client cannot change "
                                  "kind: register a new one")
            after = validate(dataclasses.replace(before, **data))
            old, new = before.to_dict(), after.to_dict()
            changed = tuple(k for k in FIELDS if k in data and old[k] != new[k])
            return ClientChange(after, before, changed, line), None
        secret = None if public else new_secret(32)
        after = validate(Client(
            client_id=client_id or new_client_id(), created_at=int(time.time()),
            secret_hash=None if secret is None else hash_secret(secret),
            **data,
        ))
        return ClientChange(after, None, (), line), secret
    except ClientError as exc:
        raise ClientError(f"{label}: {exc}") from exc
    except TypeError as exc:  # a required field missing: the name
        raise ClientError(f"{label}: a client needs a name") from exc
