"""Helpers for campaign tests: the gateway's dial settings, API calls, and a stand-in for the
telephone network that ends the calls a fake provider was asked to place."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import httpx

from dial.fakes import FakeTwilio, twilio_callback
from support import API_KEY, TWILIO_SID, TWILIO_TOKEN, VONAGE_API_KEY, VONAGE_SECRET, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAST_RETRY = {"schedule": [0.1, 0.2, 0.5], "jitter": 0.0, "total_timeout": 60}


def dial_config(twilio: FakeTwilio, **dial: Any) -> dict[str, Any]:
    """Config overrides: Twilio at the fake, a fast runner, inline webhooks allowed to loopback."""
    return {
        "providers": {
            "twilio": {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "api_base_url": twilio.url},
            "vonage": {"signature_secret": VONAGE_SECRET, "api_key": VONAGE_API_KEY, "application_id": "app-1"},
        },
        "dial": {"poll_seconds": 0.05, "webhook_retry": FAST_RETRY, "webhook_allow_networks": ["127.0.0.0/8"],
                 "caller_id": {"twilio": "+14155550199"}, "default_provider": "twilio", **dial},
    }


def api(base: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


def phones(n: int, start: int = 100) -> list[str]:
    return [f"+1415555{start + i:04d}" for i in range(n)]


def create(base: str, numbers: list[str], **options: Any) -> dict[str, Any]:
    body = {"workflow_id": "wf-c", "user_id": "user-c", "contacts": [{"phone": p, "name": f"Contact {i}"}
                                                                      for i, p in enumerate(numbers)],
            "options": options}
    response = api(base, "POST", "/api/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def campaign(base: str, campaign_id: str) -> dict[str, Any]:
    return api(base, "GET", f"/api/v1/campaigns/{campaign_id}").json()




def wait_status(base: str, campaign_id: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_until(lambda: (c := campaign(base, campaign_id))["status"] == status and c, timeout,
                      f"campaign {status}")


def to_number(entry: dict[str, Any]) -> str:
    return entry["body"]["To"][0]


class Network:
    """Ends each call the fake provider placed, as `fate(entry, attempt)` says: a list of
    (CallStatus, extra params) posted as signed status callbacks, in order."""

    ANSWERED = [("ringing", {}), ("in-progress", {}), ("completed", {"CallDuration": "30"})]

    def __init__(self, twilio: FakeTwilio, fate: Callable[[dict[str, Any], int], list[tuple[str, dict[str, str]]]] | None = None,
                 *, hold: Callable[[dict[str, Any]], bool] = lambda entry: False) -> None:
        self.twilio = twilio
        self.fate = fate or (lambda entry, attempt: self.ANSWERED)
        self.hold = hold  # calls held stay up until released
        self.done: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Network":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in self.twilio.of("create"):
                sid = entry.get("sid")
                if not sid or sid in self.done or self.hold(entry):
                    continue
                self.done.add(sid)
                number = to_number(entry)
                self.attempts[number] = self.attempts.get(number, 0) + 1
                try:
                    for sequence, (status, extra) in enumerate(self.fate(entry, self.attempts[number]), start=1):
                        if status == "await-hangup":  # the call stays up until the gateway ends it
                            wait_until(lambda: any(u["params"]["sid"] == sid for u in self.twilio.of("update")),
                                       what=f"a hangup of {sid}")
                            continue
                        if status == "in-progress":
                            self.twilio.statuses[sid] = "in-progress"
                        twilio_callback(entry, status, sequence=sequence if status else None, **extra)
                except BaseException as error:  # noqa: BLE001 - reported by __exit__
                    self.errors.append(error)
            time.sleep(0.02)
