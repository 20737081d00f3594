"""The update planner (`gateway.calls.planner`) without a database: a batch plans what the same
updates plan one at a time; duplicates, late and out-of-order callbacks are kept in the timeline
and change nothing; calls are found by run id, then by the provider's call id, else created."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls import events as ev
from gateway.calls.lifecycle import CallUpdate
from gateway.calls.planner import BatchPlan, UpdateItem, lookup_keys, plan_updates
from gateway.calls.record import CallRecord
from gateway.calls.seed import CallSeed
from gateway.calls.states import CallState

NOW = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
STATES = [CallState.INITIATED, CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED, CallState.BUSY]


def run_ids() -> itertools.count[int]:
    return itertools.count(1)


def minted(counter: itertools.count[int]) -> str:
    return f"run-new-{next(counter)}"


def status(call: str, state: CallState | None, *, sequence: int | None = None, **extra: object) -> CallUpdate:
    return CallUpdate(
        provider="twilio",
        provider_call_id=call,
        raw_status=state.value if state else None,
        state=state,
        sequence=sequence,
        occurred_at=NOW - timedelta(seconds=30),
        params={"CallSid": call, "CallStatus": state.value if state else ""},
        **extra,  # type: ignore[arg-type]
    )


def shape(plan: BatchPlan) -> list[tuple[object, ...]]:
    """What a plan writes, without the events' random ids."""
    return [
        (
            p.applied.record,
            [(e.type, e.workflow_run_id, e.data) for e in p.applied.events],
            p.applied.outcome,
            p.applied.created,
            p.timeline,
        )
        for p in plan.plans
    ]


def one_at_a_time(items: list[UpdateItem], found: list[CallRecord], counter: itertools.count[int]) -> BatchPlan:
    """The reference: each update planned alone against the calls as the previous ones left them."""
    calls = {record.workflow_run_id: record for record in found}
    plans = []
    created: set[str] = set()
    for item in items:
        plan = plan_updates([item], list(calls.values()), now=NOW, new_run_id=lambda: minted(counter))
        calls.update(plan.changed)
        created |= plan.created
        plans += plan.plans
    changed = {p.applied.record.workflow_run_id: calls[p.applied.record.workflow_run_id] for p in plans}
    return BatchPlan(plans, changed, created)


update_items = st.lists(
    st.builds(
        lambda call, state, sequence, by_run: UpdateItem(
            status(f"CA{call}", state, sequence=sequence), f"run-{call}" if by_run else None
        ),
        st.integers(0, 2),
        st.sampled_from([*STATES, None]),
        st.one_of(st.none(), st.integers(0, 5)),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(items=update_items, existing=st.sets(st.integers(0, 2)))
def test_a_batch_plans_what_the_same_updates_plan_one_at_a_time(items: list[UpdateItem], existing: set[int]) -> None:
    found = [
        CallRecord(workflow_run_id=f"run-{n}", provider="twilio", provider_call_id=f"CA{n}", created_at=NOW)
        for n in sorted(existing)
    ]
    before = copy.deepcopy(found)
    batch_counter, single_counter = run_ids(), run_ids()
    batch = plan_updates(items, copy.deepcopy(found), now=NOW, new_run_id=lambda: minted(batch_counter))
    reference = one_at_a_time(items, copy.deepcopy(found), single_counter)
    assert shape(batch) == shape(reference)
    assert batch.changed == reference.changed
    assert batch.created == reference.created
    assert found == before  # the calls read are not changed in place
    assert len(batch.timeline) == len(items)  # every callback is kept, whatever it did


@settings(max_examples=200, deadline=None)
@given(order=st.permutations([CallState.INITIATED, CallState.RINGING, CallState.ANSWERED, CallState.COMPLETED]))
def test_disorder_only_moves_forward_and_ends_once(order: list[CallState]) -> None:
    plan = plan_updates(
        [UpdateItem(status("CA1", state), "run-1") for state in order], [], now=NOW, new_run_id=lambda: "unused"
    )
    assert plan.changed["run-1"].state == CallState.COMPLETED
    emitted = [e.type for events in plan.events for e in events]
    assert emitted.count(ev.CALL_ENDED) == 1
    assert len(emitted) == len(set(emitted))  # no state event twice
    outcomes = [p.applied.outcome for p in plan.plans]
    assert outcomes[0] == "created"
    after_end = outcomes[order.index(CallState.COMPLETED) + 1 :]
    assert all(outcome == "terminal" for outcome in after_end)  # a finished call never changes


def test_a_duplicate_is_kept_in_the_timeline_and_emits_nothing() -> None:
    ringing = status("CA1", CallState.RINGING)
    plan = plan_updates([UpdateItem(ringing, "run-1"), UpdateItem(ringing, "run-1")], [], now=NOW)
    first, second = plan.plans
    assert first.applied.outcome == "created" and [e.type for e in first.applied.events] == [ev.CALL_RINGING]
    assert second.applied.outcome == "duplicate" and second.applied.events == []
    assert [entry.outcome for entry in plan.timeline] == ["created", "duplicate"]
    assert second.timeline.raw_status == "ringing" and second.timeline.data == ringing.params


def test_a_late_sequence_changes_nothing() -> None:
    plan = plan_updates(
        [
            UpdateItem(status("CA1", CallState.RINGING, sequence=3), "run-1"),
            UpdateItem(status("CA1", CallState.ANSWERED, sequence=2), "run-1"),
        ],
        [],
        now=NOW,
    )
    assert [p.applied.outcome for p in plan.plans] == ["created", "late"]
    assert plan.changed["run-1"].state == CallState.RINGING
    assert plan.changed["run-1"].last_sequence == 3


def test_a_call_is_found_by_run_then_by_provider_id_else_created() -> None:
    known = CallRecord(workflow_run_id="run-a", provider="twilio", provider_call_id="CA-a", created_at=NOW)
    minted_ids = iter(["run-fresh"])
    plan = plan_updates(
        [
            UpdateItem(status("CA-a", CallState.RINGING)),  # no run: found by the provider's id
            UpdateItem(status("CA-b", CallState.RINGING)),  # unknown: created with a fresh run id
            UpdateItem(status("CA-b", CallState.ANSWERED)),  # the call the batch just made
        ],
        [known],
        now=NOW,
        new_run_id=lambda: next(minted_ids),
    )
    assert [p.applied.record.workflow_run_id for p in plan.plans] == ["run-a", "run-fresh", "run-fresh"]
    assert [p.applied.created for p in plan.plans] == [False, True, False]
    assert plan.created == {"run-fresh"}
    assert set(plan.changed) == {"run-a", "run-fresh"}
    assert plan.changed["run-fresh"].state == CallState.ANSWERED


def test_a_seed_fills_only_empty_fields() -> None:
    seed = CallSeed(workflow_id="wf", to_number="+15550001", from_number="+15550009", initial_context={"a": 1})
    update = status("CA1", CallState.INITIATED, from_number="+15551234")
    (plan,) = plan_updates([UpdateItem(update, "run-1", seed)], [], now=NOW).plans
    record = plan.applied.record
    assert (record.workflow_id, record.to_number, record.initial_context) == ("wf", "+15550001", {"a": 1})
    assert record.from_number == "+15551234"  # the provider's value stands
    assert plan.applied.events[0].data["to"] == "+15550001"  # the event carries the filled record


def test_lookup_keys_names_each_run_and_provider_id_once() -> None:
    items = [
        UpdateItem(status("CA1", CallState.RINGING), "run-1"),
        UpdateItem(status("CA1", CallState.ANSWERED), "run-1"),
        UpdateItem(status("CA2", None)),
    ]
    assert lookup_keys(items) == (["run-1"], [("twilio", "CA1"), ("twilio", "CA2")])
