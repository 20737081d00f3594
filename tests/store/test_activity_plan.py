"""What one gateway activity writes (`plan_activity`), without a database: the timeline entry,
the context merged into the call, the events with the whole record and their detail; nothing
for a replaced media session; a finished call refuses a new one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.calls.record import CallRecord
from gateway.calls.states import CallState
from gateway.store.activity import CallEnded, plan_activity

NOW = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)


def call(**fields: object) -> CallRecord:
    values: dict[str, object] = {"state": CallState.ANSWERED, **fields}
    return CallRecord(workflow_run_id="run-1", created_at=NOW, **values)  # type: ignore[arg-type]


def test_an_activity_merges_its_context_and_emits_with_the_record() -> None:
    record = call(gathered_context={"a": 1})
    plan = plan_activity(
        record,
        source="agent",
        kind="agent.message",
        data={"text": "hi"},
        now=NOW,
        events=[("call.agent_message", {"text": "hi"})],
        gathered_context={"b": 2},
    )
    assert plan is not None
    assert plan.record is record and record.gathered_context == {"a": 1, "b": 2} and record.updated_at == NOW
    assert (plan.timeline.run_id, plan.timeline.kind, plan.timeline.outcome, plan.timeline.data) == (
        "run-1",
        "agent.message",
        "recorded",
        {"text": "hi"},
    )
    (event,) = plan.events
    assert (event.type, event.workflow_run_id, event.occurred_at) == ("call.agent_message", "run-1", NOW)
    assert event.data["gathered_context"] == {"a": 1, "b": 2} and event.data["detail"] == {"text": "hi"}


def test_an_activity_that_changes_nothing_of_the_call_does_not_rewrite_it() -> None:
    plan = plan_activity(call(), source="gateway", kind="dtmf", data={"digit": "5"}, now=NOW)
    assert plan is not None and plan.record is None and plan.events == []
    assert plan.timeline.data == {"digit": "5"}


def test_a_replaced_media_session_writes_nothing() -> None:
    record = call(media={"session": "new", "ended": False})
    assert plan_activity(record, source="media", kind="media.stats", data={}, now=NOW, session="old") is None


def test_a_finished_call_takes_no_new_media_session() -> None:
    with pytest.raises(CallEnded):
        plan_activity(
            call(state=CallState.COMPLETED), source="media", kind="media.connected", data={}, now=NOW, session="s1"
        )
