"""A finished call's disposition: the one word that says how it ended, in Dograh's vocabulary.

Dograh puts `call_disposition` in `gathered_context` and on every webhook payload; an agent may
set its own (`gathered_context.call_disposition`), else it is the reason the call ended. The
gateway's words, from the call's normalized outcome:

| the call                               | disposition          |
|----------------------------------------|----------------------|
| answered by a machine (voicemail)      | `voicemail_detected` |
| completed                              | `completed`          |
| busy / no-answer / failed / canceled   | the state's word     |
| not ended yet                          | None                 |

Pure.
"""

from __future__ import annotations

from gateway.calls.record import CallRecord

VOICEMAIL = "voicemail_detected"


def call_disposition(record: CallRecord) -> str | None:
    """The agent's `gathered_context.call_disposition` when it set one, else the outcome's word
    (table above); None while the call is not over."""
    chosen = record.gathered_context.get("call_disposition") if isinstance(record.gathered_context, dict) else None
    if isinstance(chosen, str) and chosen:
        return chosen
    if not record.state.terminal:
        return None
    return VOICEMAIL if record.voicemail else record.state.value
