"""Provider protocol logic: signature verification, callback parsing, answer rendering. Pure.

One module per provider (`twilio`, `vonage`, `telnyx`, `plivo`, each with its `_media` framing
and `_rest` dialing); `base`, `media_json` and `rest` hold what they share.
"""

from gateway.providers.base import (
    MAX_BODY_BYTES,
    BadRequest,
    Verdict,
    parse_form,
    parse_json_object,
)

PROVIDERS = ("twilio", "vonage", "telnyx", "plivo")
"""Every provider the gateway speaks, by the name used in config, paths and records."""

__all__ = ["MAX_BODY_BYTES", "PROVIDERS", "BadRequest", "Verdict", "parse_form", "parse_json_object"]
