"""YAML files people write (rules, clients), read so that errors can name their line."""

from __future__ import annotations

import yaml


def compose(text: str, error: type[Exception]) -> yaml.Node | None:
    """The document's node tree (it keeps line numbers, which plain loading drops), or
    None for an empty one; ``error`` naming the line when the text is not YAML."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise error(f"{where}not valid YAML ({getattr(exc, 'problem', exc)})") from exc
