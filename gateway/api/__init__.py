"""Starlette routes: provider-facing telephony, the admin API, health. Thin: parse, call, render."""
