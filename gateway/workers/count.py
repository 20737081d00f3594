"""The `workers` setting: how many worker processes serve the port."""

from __future__ import annotations

import os

MAX_WORKERS = 64
AUTO = "auto"


def check_workers(value: object) -> int | str:
    """`value` as a valid `workers` setting (1-64, or `auto`; digits from `${VAR}` count as the
    number); ValueError otherwise."""
    if value == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS}, or {AUTO} (one per usable core)")
    return value


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(value: int | str, cores: int | None = None) -> int:
    """The number of workers `value` asks for (`auto`: one per usable core, at most MAX_WORKERS)."""
    if value == AUTO:
        return min(MAX_WORKERS, cores if cores is not None else usable_cores())
    checked = check_workers(value)
    assert isinstance(checked, int)
    return checked
