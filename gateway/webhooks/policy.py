"""What an attempt's answer means and when to try again. Pure: time and randomness are injected.

Classification of one attempt (`classify_response`, `classify_error`):

| answer                                             | outcome   |
|----------------------------------------------------|-----------|
| status in the success classes (default `2xx`) and  | success   |
| the success expression (if any) truthy             |           |
| success status but the expression false, or the    | fail      |
| body is not JSON while an expression is required   |           |
| 410 Gone                                           | disable   |
| 408, 425, 429, any 5xx                             | retry     |
| connection error, timeout, TLS failure             | retry     |
| 3xx (redirects are never followed), other 4xx,     | fail      |
| 2xx outside the success classes                    |           |
| destination refused by the SSRF guard              | fail      |

A 2xx whose body says "not ok" is `fail`, not `retry`: the receiver took the request and gave a
considered answer, and replaying the same bytes would only produce duplicates. Receivers that
want a retry answer 5xx, 429 or 408.

Delay before the next attempt (`next_delay`): the schedule entry for the number of attempts made,
+/- `jitter` of it; a `Retry-After` (seconds or HTTP date) lengthens it up to one hour but never
shortens it below the schedule; after a 429 at least 60 s. None when the schedule is exhausted
or the next attempt would start after `total_timeout` from the first: the message is dead.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath.exceptions import JMESPathError

if TYPE_CHECKING:
    from gateway.webhooks.subscription import RetryPolicy, SuccessRule

RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429})
DISABLE_STATUSES: frozenset[int] = frozenset({410})
RETRY_AFTER_MAX = 3600.0
TOO_MANY_REQUESTS_FLOOR = 60.0


class Outcome(StrEnum):
    """What to do after an attempt."""

    SUCCESS = "success"
    RETRY = "retry"
    FAIL = "fail"
    DISABLE = "disable"


def parse_status_class(text: str) -> tuple[int, int]:
    """`"2xx"`, `"200"` or `"200-299"` as an inclusive (low, high) range; ValueError otherwise."""
    value = str(text).strip().lower()
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return low, low + 99
    low_text, dash, high_text = value.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(f"status class {text!r} is not like '2xx', '200' or '200-299'") from None
    if not (100 <= low <= high <= 599):
        raise ValueError(f"status class {text!r} is outside 100-599 or reversed")
    return low, high


def status_in(status: int, classes: Sequence[str]) -> bool:
    """Whether `status` falls in any of the status classes."""
    return any(low <= status <= high for low, high in map(parse_status_class, classes))


@lru_cache(maxsize=1024)
def compile_expression(expression: str) -> Any:
    """A compiled JMESPath expression (cached); raises jmespath's ParseError when malformed."""
    return jmespath.compile(expression)


def search(expression: str, document: Any) -> Any:
    """JMESPath `expression` over `document`; None when it cannot be evaluated."""
    try:
        return compile_expression(expression).search(document)
    except JMESPathError:
        return None


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null and empty strings, lists, objects are false; 0 is true."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (str, list, dict)) and not value)


def is_success(status: int | None, body: Any, rule: SuccessRule) -> bool:
    """Whether the answer meets the subscription's success rule (status class and expression)."""
    if status is None or not status_in(status, rule.status):
        return False
    if rule.expression is None:
        return True
    return body is not None and is_truthy(search(rule.expression, body))


def classify_response(status: int, body: Any, rule: SuccessRule) -> Outcome:
    """The outcome of an attempt that got an HTTP answer (see the module table)."""
    if status_in(status, rule.status):
        return Outcome.SUCCESS if is_success(status, body, rule) else Outcome.FAIL
    if status in DISABLE_STATUSES:
        return Outcome.DISABLE
    if status in RETRY_STATUSES or 500 <= status <= 599:
        return Outcome.RETRY
    return Outcome.FAIL


def classify_error(kind: str) -> Outcome:
    """The outcome of an attempt without an HTTP answer: `refused`, `invalid` fail; others retry."""
    return Outcome.FAIL if kind in ("refused", "invalid") else Outcome.RETRY


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta seconds or HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def next_delay(
    retry: RetryPolicy,
    attempts: int,
    *,
    first_attempt_at: float,
    now: float,
    status: int | None = None,
    retry_after: float | None = None,
    random: Callable[[], float] = _random.random,
) -> float | None:
    """Seconds until the attempt after `attempts` attempts, or None when the message is dead."""
    if attempts < 1 or attempts > len(retry.schedule):
        return None
    base = float(retry.schedule[attempts - 1])
    delay = base * (1.0 + retry.jitter * (2.0 * random() - 1.0))
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
    if status == 429:
        delay = max(delay, TOO_MANY_REQUESTS_FLOOR)
    if now + delay > first_attempt_at + retry.total_timeout:
        return None
    return delay


def map_response(
    name: str,
    status: int | None,
    body: Any,
    mapping: Mapping[str, str],
    *,
    success: bool,
    raw_text: str | None = None,
) -> dict[str, Any]:
    """Values for the call's gathered_context: each mapping's JMESPath result over the JSON body,
    plus `<name>_status_code`, `<name>_action_success` and, when given, `<name>_raw_response`."""
    values: dict[str, Any] = {
        key: (search(expression, body) if body is not None else None) for key, expression in mapping.items()
    }
    values[f"{name}_status_code"] = status
    values[f"{name}_action_success"] = success
    if raw_text is not None:
        values[f"{name}_raw_response"] = raw_text
    return values
