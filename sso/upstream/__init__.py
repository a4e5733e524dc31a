"""Upstream identity providers. The server sees :class:`Identity`, never GitHub's JSON."""

from sso.upstream.base import (
    Connector,
    Identity,
    UpstreamError,
    UpstreamToken,
)

__all__ = ["Connector", "Identity", "UpstreamError", "UpstreamToken"]
