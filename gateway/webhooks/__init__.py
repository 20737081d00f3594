"""Outbound webhooks: subscriptions, templates, auth, signing, policy, SSRF guard, sending."""
