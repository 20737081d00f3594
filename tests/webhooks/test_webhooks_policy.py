"""Delivery policy: classification, status classes, Retry-After, delays, response mapping."""

from __future__ import annotations

from email.utils import format_datetime
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.webhooks.policy import (
    Outcome,
    classify_error,
    classify_response,
    is_success,
    map_response,
    next_delay,
    parse_retry_after,
    parse_status_class,
    status_in,
)
from gateway.webhooks.subscription import RetryPolicy, SuccessRule

DEFAULT = SuccessRule()
EXPRESSION = SuccessRule(expression="ok == `true`")


@pytest.mark.parametrize(
    ("status", "body", "rule", "outcome"),
    [
        (200, None, DEFAULT, Outcome.SUCCESS),
        (204, None, DEFAULT, Outcome.SUCCESS),
        (299, None, DEFAULT, Outcome.SUCCESS),
        (200, {"ok": True}, EXPRESSION, Outcome.SUCCESS),
        (200, {"ok": False}, EXPRESSION, Outcome.FAIL),
        (200, None, EXPRESSION, Outcome.FAIL),
        (200, ["not", "an", "object"], EXPRESSION, Outcome.FAIL),
        (301, None, DEFAULT, Outcome.FAIL),
        (302, None, DEFAULT, Outcome.FAIL),
        (304, None, DEFAULT, Outcome.FAIL),
        (400, None, DEFAULT, Outcome.FAIL),
        (401, None, DEFAULT, Outcome.FAIL),
        (403, None, DEFAULT, Outcome.FAIL),
        (404, None, DEFAULT, Outcome.FAIL),
        (422, None, DEFAULT, Outcome.FAIL),
        (408, None, DEFAULT, Outcome.RETRY),
        (425, None, DEFAULT, Outcome.RETRY),
        (429, None, DEFAULT, Outcome.RETRY),
        (500, None, DEFAULT, Outcome.RETRY),
        (502, None, DEFAULT, Outcome.RETRY),
        (503, {"ok": True}, EXPRESSION, Outcome.RETRY),
        (599, None, DEFAULT, Outcome.RETRY),
        (410, None, DEFAULT, Outcome.DISABLE),
        (202, None, SuccessRule(status=["200"]), Outcome.FAIL),
        (409, None, SuccessRule(status=["2xx", "409"]), Outcome.SUCCESS),
    ],
)
def test_classification_table(status, body, rule, outcome):
    assert classify_response(status, body, rule) is outcome


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [("network", Outcome.RETRY), ("timeout", Outcome.RETRY), ("auth", Outcome.RETRY),
     ("refused", Outcome.FAIL), ("invalid", Outcome.FAIL)],
)
def test_errors_without_an_answer(kind, outcome):
    assert classify_error(kind) is outcome


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2xx", (200, 299)), ("4XX", (400, 499)), ("200", (200, 200)), ("200-204", (200, 204)), (" 5xx ", (500, 599))],
)
def test_status_classes(text, expected):
    assert parse_status_class(text) == expected


@pytest.mark.parametrize("text", ["6xx", "2x", "abc", "299-200", "99", "600", "2xx-3xx"])
def test_bad_status_classes(text):
    with pytest.raises(ValueError):
        parse_status_class(text)


def test_status_in_and_expression_truthiness():
    assert status_in(201, ["200", "201-202"]) and not status_in(203, ["200", "201-202"])
    rule = SuccessRule(expression="data.accepted")
    assert is_success(200, {"data": {"accepted": 0}}, rule)  # JMESPath: 0 is true
    for falsy in (False, None, "", [], {}):
        assert not is_success(200, {"data": {"accepted": falsy}}, rule)
    assert not is_success(None, {"data": {"accepted": True}}, rule)


NOW = 1_800_000_000.0


def test_retry_after_forms():
    assert parse_retry_after("120", NOW) == 120.0
    http_date = format_datetime(datetime.fromtimestamp(NOW + 300, timezone.utc), usegmt=True)
    assert parse_retry_after(http_date, NOW) == pytest.approx(300.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 300, timezone.utc), usegmt=True)
    assert parse_retry_after(past, NOW) == 0.0
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def no_jitter(**fields) -> RetryPolicy:
    return RetryPolicy(jitter=0, **fields)


def test_delays_follow_the_schedule_then_die():
    policy = no_jitter()
    delays = [next_delay(policy, n, first_attempt_at=NOW, now=NOW) for n in range(1, 8)]
    assert delays == [1, 5, 25, 120, 600, 3600, None]
    assert next_delay(policy, 0, first_attempt_at=NOW, now=NOW) is None
    assert next_delay(no_jitter(schedule=[]), 1, first_attempt_at=NOW, now=NOW) is None


def test_retry_after_is_honoured_within_bounds():
    policy = no_jitter()
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, retry_after=30) == 30
    assert next_delay(policy, 3, first_attempt_at=NOW, now=NOW, retry_after=2) == 25  # never shorter
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, retry_after=999_999) == 3600  # capped


def test_too_many_requests_waits_at_least_a_minute():
    policy = no_jitter()
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, status=429) == 60
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, status=429, retry_after=5) == 60
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, status=429, retry_after=90) == 90
    assert next_delay(policy, 5, first_attempt_at=NOW, now=NOW, status=429) == 600
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW, status=503) == 1


@given(st.integers(min_value=1, max_value=6), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_jitter_stays_within_bounds(attempts, draw):
    policy = RetryPolicy(jitter=0.2)
    base = policy.schedule[attempts - 1]
    delay = next_delay(policy, attempts, first_attempt_at=NOW, now=NOW, random=lambda: draw)
    assert base * 0.8 <= delay <= base * 1.2


def test_jitter_extremes():
    policy = RetryPolicy(jitter=0.2)
    assert next_delay(policy, 4, first_attempt_at=NOW, now=NOW, random=lambda: 0.0) == pytest.approx(96)
    assert next_delay(policy, 4, first_attempt_at=NOW, now=NOW, random=lambda: 0.5) == pytest.approx(120)
    assert next_delay(policy, 4, first_attempt_at=NOW, now=NOW, random=lambda: 0.999999) == pytest.approx(144, rel=1e-5)


def test_total_timeout_ends_retries():
    policy = no_jitter(total_timeout=100)
    assert next_delay(policy, 3, first_attempt_at=NOW, now=NOW + 70) == 25
    assert next_delay(policy, 3, first_attempt_at=NOW, now=NOW + 80) is None
    assert next_delay(policy, 1, first_attempt_at=NOW, now=NOW + 50, status=429) is None


def test_response_mapping():
    body = {"data": {"tier": "gold", "items": [{"sku": "A"}, {"sku": "B"}]}, "ok": True}
    mapping = {"customer_tier": "data.tier", "skus": "data.items[*].sku", "absent": "data.nope", "broken": "abs(data.tier)"}
    assert map_response("crm", 200, body, mapping, success=True) == {
        "customer_tier": "gold",
        "skus": ["A", "B"],
        "absent": None,
        "broken": None,
        "crm_status_code": 200,
        "crm_action_success": True,
    }
    assert map_response("crm", 500, None, {"customer_tier": "data.tier"}, success=False, raw_text="oops") == {
        "customer_tier": None,
        "crm_status_code": 500,
        "crm_action_success": False,
        "crm_raw_response": "oops",
    }
