"""Stand-ins for the providers' REST APIs on loopback, for the real SDKs to talk to.

Each records every request exactly as received (method, path, headers, parsed body, arrival
time) and answers like the provider, or as a test scripts it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from support import TWILIO_SID, ServerThread, twilio_signature, vonage_jwt

Script = Callable[[str, int, dict[str, Any]], "tuple[int, Any] | None"]
"""(kind, number of that kind so far, request) -> (status, JSON body) to answer instead, or None."""


class FakeProvider:
    """Base: a loopback server with a request log."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or (lambda kind, n, request: None)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ServerThread(Starlette(routes=self.routes()))

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> "FakeProvider":
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    async def _record(self, request: Request, kind: str, body: Any) -> tuple[dict[str, Any], int]:
        entry = {"kind": kind, "method": request.method, "path": request.url.path, "headers": dict(request.headers),
                 "body": body, "at": time.time(), "params": dict(request.path_params)}
        with self.lock:
            number = sum(1 for r in self.requests if r["kind"] == kind)
            self.requests.append(entry)
        return entry, number

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["kind"] == kind]

    def wait_for(self, kind: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(kind)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{type(self).__name__} got {len(self.of(kind))} {kind} requests, expected {count}")


class FakeTwilio(FakeProvider):
    """`/2010-04-01/Accounts/{sid}/Calls.json` and `/Calls/{CallSid}.json`.

    `gate(n, request)` may return a `threading.Event`: the n-th create is answered only once
    it is set (a request the provider is still working on)."""

    def __init__(self, script: Script | None = None,
                 gate: Callable[[int, dict[str, Any]], threading.Event | None] | None = None) -> None:
        self.statuses: dict[str, str] = {}
        self.details: dict[str, dict[str, Any]] = {}  # more fields a fetch of the call answers with
        self.gate = gate or (lambda n, request: None)
        super().__init__(script)

    def routes(self) -> list[Route]:
        base = "/2010-04-01/Accounts/{account}/Calls"
        return [Route(base + ".json", self.create, methods=["POST"]),
                Route(base + "/{sid}.json", self.update, methods=["POST"]),
                Route(base + "/{sid}.json", self.fetch, methods=["GET"])]

    async def create(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        entry, number = await self._record(request, "create", form)
        gate = self.gate(number, entry)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        scripted = self.script("create", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        sid = "CA" + uuid.uuid4().hex
        entry["sid"] = sid
        self.statuses[sid] = "queued"
        return JSONResponse({"sid": sid, "status": "queued", "account_sid": request.path_params["account"],
                             "to": form["To"][0], "from": form["From"][0], "direction": "outbound-api"}, status_code=201)

    async def update(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        entry, number = await self._record(request, "update", form)
        scripted = self.script("update", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        sid = request.path_params["sid"]
        wanted = form.get("Status", [""])[0]
        current = self.statuses.get(sid, "queued")
        if wanted == "canceled" and current == "in-progress":
            status = current  # Twilio: canceling an answered call does nothing
        else:
            status = wanted or current
        self.statuses[sid] = status
        return JSONResponse({"sid": sid, "status": status, "account_sid": request.path_params["account"]})

    async def fetch(self, request: Request) -> Response:
        entry, number = await self._record(request, "fetch", None)
        scripted = self.script("fetch", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        sid = request.path_params["sid"]
        return JSONResponse({"sid": sid, "status": self.statuses.get(sid, "queued"), **self.details.get(sid, {})})


class FakeVonage(FakeProvider):
    """`POST /v1/calls`, `PUT /v1/calls/{uuid}`, `GET /v1/calls/{uuid}` (answered from `calls`)."""

    def __init__(self, script: Script | None = None) -> None:
        self.calls: dict[str, dict[str, Any]] = {}  # uuid -> the fields a GET answers with
        super().__init__(script)

    def routes(self) -> list[Route]:
        return [Route("/v1/calls", self.create, methods=["POST"]),
                Route("/v1/calls/{uuid}", self.update, methods=["PUT"]),
                Route("/v1/calls/{uuid}", self.fetch, methods=["GET"])]

    async def fetch(self, request: Request) -> Response:
        entry, number = await self._record(request, "fetch", None)
        scripted = self.script("fetch", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        call_uuid = request.path_params["uuid"]
        return JSONResponse({"uuid": call_uuid, "conversation_uuid": "CON-1", "direction": "outbound",
                             "to": {"type": "phone", "number": "14155550100"},
                             "from": {"type": "phone", "number": "14155550199"},
                             "_links": {"self": {"href": f"/v1/calls/{call_uuid}"}}, **self.calls.get(call_uuid, {})})

    async def create(self, request: Request) -> Response:
        body = json.loads(await request.body())
        entry, number = await self._record(request, "create", body)
        scripted = self.script("create", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        call_uuid = str(uuid.uuid4())
        entry["uuid"] = call_uuid
        return JSONResponse({"uuid": call_uuid, "status": "started", "direction": "outbound",
                             "conversation_uuid": "CON-" + str(uuid.uuid4())}, status_code=201)

    async def update(self, request: Request) -> Response:
        entry, number = await self._record(request, "update", json.loads(await request.body()))
        scripted = self.script("update", number, entry)
        if scripted is not None:
            return JSONResponse(scripted[1], status_code=scripted[0])
        return Response(status_code=204)


def twilio_callback(entry: dict[str, Any], status: str, *, sequence: int | None = None, **extra: str) -> httpx.Response:
    """Post the signed status callback Twilio would send for the call `entry` created."""
    url = entry["body"]["StatusCallback"][0]
    params = {"CallSid": entry["sid"], "AccountSid": TWILIO_SID, "From": entry["body"]["From"][0],
              "To": entry["body"]["To"][0], "Direction": "outbound-api", **extra}
    if status:  # an answering-machine result comes without a CallStatus
        params["CallStatus"] = status
    if sequence is not None:
        params["SequenceNumber"] = str(sequence)
    response = httpx.post(url, data=params, headers={"X-Twilio-Signature": twilio_signature(url, params)}, timeout=10)
    assert response.status_code == 204, response.text
    return response


def vonage_event(entry: dict[str, Any], status: str, **extra: Any) -> httpx.Response:
    """Post the signed event Vonage would send for the call `entry` created."""
    url = entry["body"]["event_url"][0]
    body = json.dumps({"uuid": entry["uuid"], "conversation_uuid": "CON-1", "status": status, "direction": "outbound",
                       "from": entry["body"]["from"]["number"], "to": entry["body"]["to"][0]["number"],
                       "timestamp": "2025-01-01T00:00:00.000Z", **extra}).encode()
    response = httpx.post(url, content=body, headers={"Authorization": f"Bearer {vonage_jwt(body)}",
                                                      "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 204, response.text
    return response
