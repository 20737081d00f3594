"""Placing and ending calls through the providers' REST APIs.

`Dialer.place_call` writes the call record (`initiated`) before it asks the provider, so a
call exists in the store before the provider can call back about it; a refusal marks that
record `failed` with the provider's reason. `Dialer.hang_up` ends a live call at the provider
(the admin API, the agent's `hangup` message and `agent.on_failure: hangup` all use it), so no
call waits on dead air for a timeout. The SDKs block: their calls run in a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.calls.lifecycle import CallUpdate
from gateway.calls.record import CallRecord
from gateway.calls.states import CallState, normalize_status
from gateway.dial import urls
from gateway.errors import ProblemError
from gateway.providers.rest import DialSpec, ProviderCall, ProviderRefused, ProviderRest
from gateway.store.base import CallSeed, Store, StoreError

log = logging.getLogger("gateway.dial")

T = TypeVar("T")
# What each provider's config needs beyond its webhook secret before it can dial ("": nothing).
DIALING_KEYS = {
    "twilio": "",
    "vonage": "application_id and private_key",
    "telnyx": "api_key, account_sid and application_id",
    "plivo": "",
}
RECENT_HANGUPS = 10_000
NccoFactory = Callable[[str, str, str, str], list[dict[str, Any]]]
"""(origin, workflow_id, user_id, workflow_run_id) -> the NCCO a Vonage call starts with."""


@dataclass(frozen=True)
class CallRequest:
    """An outbound call to place."""

    provider: str
    to: str
    from_: str
    workflow_id: str
    user_id: str
    initial_context: dict[str, Any] = field(default_factory=dict)
    machine_detection: str | None = None  # None | "detect" | "message_end"
    ring_timeout: int | None = None
    run_id: str | None = None  # None: minted here
    claim: tuple[str, int] | None = None  # a campaign's (id, contact position): see `CallSeed.claim`


class DialError(ProblemError):
    """A call that was not placed; `status` is the HTTP status the API answers with."""

    def __init__(
        self, status: int, detail: str, *, record: CallRecord | None = None, refusal: ProviderRefused | None = None
    ) -> None:
        super().__init__(status, detail)
        self.record = record
        self.refusal = refusal


class HangupError(DialError):
    """A hangup that could not be done."""


@dataclass(frozen=True)
class HangupResult:
    record: CallRecord
    provider_status: str | None


def _worth_retrying(error: HangupError) -> bool:
    if error.refusal is not None:
        return error.refusal.retryable
    record = error.record  # no provider call id yet: its first callback may bring it
    return error.status == 409 and record is not None and not record.state.terminal and not record.provider_call_id


class Dialer:
    """One per process: the providers' REST clients, a thread pool for them, and the calls
    being dialed right now (a hangup waits for its call's dial to finish)."""

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, ProviderRest],
        *,
        threads: int = 16,
        ncco_factory: NccoFactory | None = None,
        hangup_backoff: Sequence[float] = (0.5, 2.0, 5.0),
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        self.ncco_factory = ncco_factory
        self.hangup_backoff = tuple(hangup_backoff)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="dial")
        self._dialing: dict[str, asyncio.Future[None]] = {}
        self._hangups: dict[str, asyncio.Task[Any]] = {}
        self._hung_up: OrderedDict[str, None] = OrderedDict()  # recent background hangups that were done

    # -- plumbing -------------------------------------------------------------------------
    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def dialing(self, run_id: str) -> bool:
        """Whether this process is asking a provider for `run_id`'s call right now."""
        return run_id in self._dialing

    def refusal_for(self, provider: str) -> str | None:
        """Why `provider` cannot place calls here, or None when it can."""
        if provider in self.providers:
            return None
        if provider not in DIALING_KEYS:
            return f"provider must be one of {', '.join(DIALING_KEYS)}"
        if DIALING_KEYS[provider]:
            return f"{provider} cannot place calls on this gateway: set providers.{provider}.{DIALING_KEYS[provider]}"
        return f"{provider} is not configured on this gateway"

    async def close(self) -> None:
        """Stop background hangups (a request already sent still completes in its thread)
        and release the thread pool."""
        tasks = set(self._hangups.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=False)

    # -- placing --------------------------------------------------------------------------
    async def place_call(self, request: CallRequest, *, origin: str) -> CallRecord:
        """Create the record, dial, store the provider's call id; the record as stored.

        `DialError` (with `.record` when one was written) if the call was not placed;
        `ClaimLost` (nothing written, nothing dialed) if a campaign claim no longer holds. The
        work is shielded: a cancelled caller does not leave a dialed call unrecorded.
        """
        reason = self.refusal_for(request.provider)
        if reason is not None:
            raise DialError(400, reason)
        return await asyncio.shield(asyncio.ensure_future(self._place(request, origin)))

    async def _place(self, request: CallRequest, origin: str) -> CallRecord:
        rest = self.providers[request.provider]
        run_id = request.run_id or str(uuid.uuid4())
        seed = CallSeed(
            workflow_id=request.workflow_id,
            user_id=request.user_id,
            provider=request.provider,
            direction="outbound",
            from_number=request.from_,
            to_number=request.to,
            initial_context=dict(request.initial_context),
            claim=request.claim,
        )
        dial_params = {"to": request.to, "from": request.from_, "machine_detection": request.machine_detection}
        created = await self.store.apply_update(
            CallUpdate(
                provider=request.provider,
                kind="dial",
                state=CallState.INITIATED,
                raw_status="dialing",
                params=dial_params,
            ),
            run_id=run_id,
            seed=seed,
        )
        if not created.created:
            raise DialError(409, f"workflow_run_id {run_id!r} already names a call")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dialing[run_id] = done
        try:
            spec = DialSpec(
                to=request.to,
                from_=request.from_,
                answer_url=urls.answer_url(origin, request.workflow_id, request.user_id, run_id),
                status_url=urls.status_url(origin, run_id),
                machine_detection=request.machine_detection,
                ring_timeout=request.ring_timeout,
                ncco=(
                    self.ncco_factory(origin, request.workflow_id, request.user_id, run_id)
                    if request.provider == "vonage" and self.ncco_factory
                    else None
                ),
            )
            try:
                result = await self._blocking(rest.create_call, spec)
            except ProviderRefused as refusal:
                record = await self._mark_refused(run_id, refusal)
                raise DialError(
                    502, f"{refusal.provider} refused the call: {refusal.reason}", record=record, refusal=refusal
                ) from None
            applied = await self.store.apply_update(
                CallUpdate(
                    provider=request.provider,
                    kind="dial",
                    provider_call_id=result.provider_call_id,
                    raw_status=result.status,
                    params={"provider_call_id": result.provider_call_id, **result.raw},
                ),
                run_id=run_id,
            )
            log.info("placed %s call run=%s to=%s id=%s", request.provider, run_id, request.to, result.provider_call_id)
            return applied.record
        finally:
            self._dialing.pop(run_id, None)
            done.set_result(None)

    async def _mark_refused(self, run_id: str, refusal: ProviderRefused) -> CallRecord:
        detail = refusal.to_dict()
        log.warning(
            "%s refused call run=%s: %s (status=%s code=%s)",
            refusal.provider,
            run_id,
            refusal.reason,
            refusal.status,
            refusal.code,
        )
        annotations: dict[str, Any] = {"dial_error": detail}
        if refusal.maybe_sent:  # it may ring all the same: a campaign must never dial it again
            annotations["dial_interrupted"] = True
        await self.store.record_activity(
            run_id, source="gateway", kind="dial.refused", data=detail, annotations=annotations
        )
        applied = await self.store.apply_update(
            CallUpdate(
                provider=refusal.provider, kind="dial", state=CallState.FAILED, raw_status="dial-refused", params=detail
            ),
            run_id=run_id,
        )
        return applied.record

    # -- hanging up -----------------------------------------------------------------------
    async def hang_up(self, run_id: str, *, reason: str, source: str = "api") -> HangupResult:
        """End a live call at its provider; `HangupError` says why not."""
        record = await self.store.get_call(run_id)
        if record is None:
            raise HangupError(404, f"no call with workflow_run_id {run_id[:128]!r}")
        pending = self._dialing.get(run_id)
        if pending is not None and not record.state.terminal:
            await asyncio.wait_for(asyncio.shield(pending), timeout=60)
            record = await self.store.get_call(run_id) or record
        if record.state.terminal:
            raise HangupError(409, f"the call has already ended (state {record.state.value})", record=record)
        if not record.provider_call_id:
            raise HangupError(409, "the provider has not reported this call's id yet; try again shortly", record=record)
        rest = self.providers.get(record.provider or "")
        if rest is None:
            raise HangupError(
                409,
                f"{record.provider} calls cannot be ended from here: {self.refusal_for(record.provider or '?')}",
                record=record,
            )
        try:
            status = await self._blocking(
                rest.hangup, record.provider_call_id, answered=record.state == CallState.ANSWERED
            )
        except ProviderRefused as refusal:
            await self._note(
                run_id, "hangup.failed", {"reason": reason, "requested_by": source, "error": refusal.to_dict()}
            )
            raise HangupError(
                502, f"{refusal.provider} did not end the call: {refusal.reason}", record=record, refusal=refusal
            ) from None
        await self._note(run_id, "hangup", {"reason": reason, "requested_by": source, "provider_status": status})
        log.info("hung up %s call run=%s (%s, by %s)", record.provider, run_id, reason, source)
        return HangupResult(record=record, provider_status=status)

    def hang_up_soon(self, run_id: str, *, reason: str, source: str) -> None:
        """Hang up in the background, retrying provider errors that may pass; once per call."""
        if run_id in self._hangups or run_id in self._hung_up:
            return
        task = asyncio.ensure_future(self._hang_up_retrying(run_id, reason, source))
        self._hangups[run_id] = task
        task.add_done_callback(lambda _: self._hangups.pop(run_id, None))

    async def _hang_up_retrying(self, run_id: str, reason: str, source: str) -> None:
        delays = (*self.hangup_backoff, None)
        for delay in delays:
            try:
                await self.hang_up(run_id, reason=reason, source=source)
                self._hung_up[run_id] = None
                while len(self._hung_up) > RECENT_HANGUPS:
                    self._hung_up.popitem(last=False)
                return
            except HangupError as error:
                if delay is None or not _worth_retrying(error):
                    level = logging.INFO if error.status in (404, 409) else logging.WARNING
                    log.log(level, "hangup of run=%s (%s) not done: %s", run_id, reason, error.detail)
                    return
            except (TimeoutError, StoreError) as error:
                log.warning("hangup of run=%s (%s) failed: %s", run_id, reason, error)
                if delay is None:
                    return
            except Exception:
                log.exception("hangup of run=%s crashed", run_id)
                return
            await asyncio.sleep(delay)

    async def _note(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.store.record_activity(run_id, source="gateway", kind=kind, data=data)
        except StoreError as error:
            log.warning("could not record %s for run=%s: %s", kind, run_id, error)

    # -- asking -------------------------------------------------------------------------
    async def provider_state(self, record: CallRecord) -> tuple[ProviderCall | None, CallState | None]:
        """The call as its provider reports it and its normalized state (reconciliation)."""
        rest = self.providers.get(record.provider or "")
        if rest is None or not record.provider_call_id:
            return None, None
        call = await self._blocking(rest.fetch_call, record.provider_call_id)
        return call, normalize_status(record.provider or "", call.status)
