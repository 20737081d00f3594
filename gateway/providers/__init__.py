"""Provider protocol logic: signature verification, callback parsing, answer rendering. Pure.

One module per provider (`twilio`, `vonage`); `base` holds what they share.
"""

from gateway.providers.base import (
    MAX_BODY_BYTES,
    BadRequest,
    Verdict,
    parse_form,
    parse_json_object,
)

__all__ = ["MAX_BODY_BYTES", "BadRequest", "Verdict", "parse_form", "parse_json_object"]
