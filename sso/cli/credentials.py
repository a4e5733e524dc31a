"""Where ``sso login`` keeps its settings and tokens: ``$XDG_CONFIG_HOME/keycard/``
(``~/.config/keycard/`` by default).

``config.toml`` is written by the person (``issuer = "https://sso.example.com"``, and
optionally ``client_id``); ``tokens.json`` by ``sso login``: one sign-in, readable only by
its owner (file 0600 in a 0700 directory), replaced atomically so a crash never leaves
half a file, and removed by ``sso logout``.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import click

EXPIRY_MARGIN = 30  # seconds: a token this close to its end is treated as expired


class CredentialsError(click.ClickException):
    """A settings or tokens file Keycard cannot use; one sentence naming the file."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    # XDG Base Directory: a relative path is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "keycard"


def config_path() -> Path:
    return config_dir() / "config.toml"


def tokens_path() -> Path:
    return config_dir() / "tokens.json"


def load_config() -> dict[str, str]:
    """``issuer`` and ``client_id`` from config.toml; {} when there is no file."""
    path = config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CredentialsError(f"{path} is not a readable TOML file: {exc}") from exc
    out: dict[str, str] = {}
    for name in ("issuer", "client_id"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise CredentialsError(f"{path}: {name} must be a string, e.g. "
                                   f'{name} = "https://sso.example.com"')
        if value:
            out[name] = value
    return out


@dataclass
class Tokens:
    """One sign-in: what ``--print-token`` and ``sso logout`` need."""

    issuer: str
    client_id: str
    access_token: str
    expires_at: int
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str = ""
    login: str | None = None

    def fresh(self, now: float | None = None) -> bool:
        return self.expires_at - EXPIRY_MARGIN > (time.time() if now is None else now)


def load_tokens() -> Tokens | None:
    path = tokens_path()
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path} is unreadable ({exc.__class__.__name__}): delete it "
                               "and run `sso login` again.") from exc
    names = {f.name for f in fields(Tokens)}
    try:
        return Tokens(**{k: v for k, v in data.items() if k in names})
    except (TypeError, AttributeError) as exc:
        raise CredentialsError(f"{path} is not a Keycard tokens file: delete it and run "
                               "`sso login` again.") from exc


@contextmanager
def tokens_lock() -> Iterator[None]:
    """One refresh at a time: Keycard rotates refresh tokens and treats a second use of
    one as theft (the whole sign-in ends), so two scripts refreshing at once must not
    both spend the same token. The second waits, then finds the first one's tokens."""
    path = config_dir() / "tokens.lock"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CredentialsError(f"Cannot lock {path}: {exc.strerror or exc}.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def save_tokens(tokens: Tokens) -> Path:
    """Write 0600 in a 0700 directory, through a temporary file renamed into place."""
    path = tokens_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # it may have existed with wider rights (config.toml)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
                json.dump(asdict(tokens), out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CredentialsError(f"Cannot save the tokens to {path}: {exc.strerror or exc}.") \
            from exc
    return path


def forget_tokens() -> bool:
    try:
        tokens_path().unlink()
    except FileNotFoundError:
        return False
    return True
