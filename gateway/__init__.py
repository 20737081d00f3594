"""Telephony call-event gateway: providers in, voice agents and webhooks out."""

__version__ = "0.1.0"
