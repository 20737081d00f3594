"""Webhook retry policy pinned at its edges: status-class bounds, the 5xx range, the total
timeout's boundary, Retry-After forms, and what map_response does without a body."""

from __future__ import annotations

import pytest

from gateway.webhooks.policy import (
    Outcome,
    classify_response,
    map_response,
    next_delay,
    parse_retry_after,
    parse_status_class,
)
from gateway.webhooks.subscription import RetryPolicy, SuccessRule

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("status", "outcome"), [
    (499, Outcome.FAIL), (500, Outcome.RETRY), (599, Outcome.RETRY), (600, Outcome.FAIL), (999, Outcome.FAIL),
    (410, Outcome.DISABLE), (408, Outcome.RETRY), (425, Outcome.RETRY), (429, Outcome.RETRY), (301, Outcome.FAIL),
])
def test_outcome_edges(status, outcome):
    assert classify_response(status, None, SuccessRule()) is outcome


@pytest.mark.parametrize(("text", "expected"), [
    ("1xx", (100, 199)), ("5XX", (500, 599)), (" 2xx ", (200, 299)), ("599", (599, 599)), ("100-599", (100, 599)),
    ("200-200", (200, 200)),
])
def test_status_class_bounds_are_inclusive(text, expected):
    assert parse_status_class(text) == expected


@pytest.mark.parametrize("text", ["6xx", "0xx", "x2x", "99", "600", "100-600", "300-200", "2xxx", "", "a-b"])
def test_bad_status_classes_name_the_text(text):
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as info:
        parse_status_class(text)
    assert "status class" in str(info.value)


def test_retry_after_digits_are_ascii_seconds():
    assert parse_retry_after(" 7 ", NOW) == 7.0
    assert parse_retry_after("\u00b2", NOW) is None  # float("²") raised ValueError
    assert parse_retry_after("\u0661", NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", NOW) is None  # no zone: not an HTTP date
    assert parse_retry_after("not a date, 99 Foo", NOW) is None


def test_total_timeout_boundary_is_inclusive():
    policy = RetryPolicy(schedule=[10], jitter=0, total_timeout=100)
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW + 90) == 10  # lands exactly on the limit
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW + 90.5) is None


def test_map_response_without_a_body_maps_to_none():
    values = map_response("crm", 502, None, {"tier": "data.tier", "whole": "@"}, success=False)
    assert values == {"tier": None, "whole": None, "crm_status_code": 502, "crm_action_success": False}
