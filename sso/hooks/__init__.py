"""Inbound webhooks: the upstream tells Keycard at once that someone's membership changed."""
