"""The API's request shapes for placing calls and creating campaigns, validated. Pure.

Every model forbids unknown keys; `describe` turns a validation error into lines naming the
offending key, so a typo gets a 400 that says which key was wrong.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import time as dtime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import GatewayError
from gateway.providers import PROVIDERS  # noqa: F401 - the names a request may give
from gateway.webhooks.subscription import describe_validation_error

PATH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~:@-]{0,127}$")
_PHONE = re.compile(r"^\+?[1-9]\d{6,14}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_CONTACTS = 100_000
RETRY_OUTCOMES = ("busy", "no-answer", "voicemail", "failed")


class SpecError(GatewayError, ValueError):
    """A request that cannot be used; the message names each problem by key."""


def describe(error: ValidationError) -> str:
    return describe_validation_error(error).replace("\n", "; ")


def normalize_phone(value: str) -> str:
    """E.164 with a leading `+` (spaces, dashes, dots and brackets removed)."""
    if not isinstance(value, str):
        raise ValueError("must be a phone number string")
    compact = re.sub(r"[\s().-]", "", value)
    if not _PHONE.match(compact):
        raise ValueError("must be an E.164 phone number like +14155550100")
    return compact if compact.startswith("+") else "+" + compact


def _path_id(value: str) -> str:
    if not PATH_ID.match(value):
        raise ValueError("must be 1-128 characters of letters, digits and ._~:@- (it goes into the call's URLs)")
    return value


def machine_detection_mode(value: Any) -> str | None:
    """true/"detect" -> "detect"; "message_end" -> "message_end"; false/None -> None."""
    if value in (None, False, "none", "off"):
        return None
    if value in (True, "detect", "enable", "Enable"):
        return "detect"
    if value in ("message_end", "DetectMessageEnd"):
        return "message_end"
    raise ValueError('must be true, false, "detect" or "message_end"')


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# The JSON schemas (the OpenAPI document) show the canonical forms; the validators below also
# take a phone number with spaces, dashes, dots and brackets.
Phone = Annotated[
    str, Field(min_length=1, json_schema_extra={"pattern": r"^\+?[1-9][0-9]{6,14}$", "examples": ["+14155550100"]})
]
PathId = Annotated[str, Field(json_schema_extra={"pattern": PATH_ID.pattern})]


class CallSpec(_Model):
    """`POST /api/v1/calls`."""

    provider: Literal["twilio", "vonage", "telnyx", "plivo"] | None = None
    to: Phone
    from_: Phone | None = Field(None, alias="from")
    workflow_id: PathId
    user_id: PathId
    initial_context: dict[str, Any] = Field(default_factory=dict)
    machine_detection: Any = False
    ring_timeout: int | None = Field(None, ge=5, le=600)

    _phones = field_validator("to", "from_")(lambda v: None if v is None else normalize_phone(v))
    _ids = field_validator("workflow_id", "user_id")(lambda v: _path_id(v))
    _amd = field_validator("machine_detection")(lambda v: machine_detection_mode(v))


class Window(_Model):
    """Local calling hours: new calls start only from `start` until `end` (`end` < `start`
    spans midnight), on `days` (0 = Monday) when given."""

    start: str
    end: str
    timezone: str = "UTC"
    days: list[Annotated[int, Field(ge=0, le=6)]] | None = None

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError("must be a 24-hour time HH:MM")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def bounds(self) -> tuple[dtime, dtime]:
        (h1, m1), (h2, m2) = (map(int, t.split(":")) for t in (self.start, self.end))
        return dtime(h1, m1), dtime(h2, m2)


class RetryOptions(_Model):
    """Call a contact again after these outcomes, at most `max` more times, `delay` s apart."""

    on: list[str] = Field(default_factory=list)
    max: int = Field(0, ge=0, le=10)
    delay: float = Field(300.0, ge=0, le=7 * 86400)

    @field_validator("on")
    @classmethod
    def _outcomes(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            word = str(item).strip().lower().replace("_", "-")
            if word not in RETRY_OUTCOMES:
                raise ValueError(f"{item!r} is not one of {', '.join(RETRY_OUTCOMES)}")
            if word not in out:
                out.append(word)
        return out


class InlineWebhooks(_Model):
    """Dialgen-style per-campaign webhook URLs."""

    onBatchComplete: str | None = None
    onCallComplete: str | None = None
    onBatchFailed: str | None = None

    @field_validator("onBatchComplete", "onCallComplete", "onBatchFailed")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s?#]+[^\s]*$", value):
            raise ValueError("must be an absolute http:// or https:// URL")
        if "{{" in value or "}}" in value:
            raise ValueError("must not contain {{ or }}")
        if len(value) > 2048:
            raise ValueError("must be at most 2048 characters")
        return value

    def urls(self) -> dict[str, str]:
        return {kind: url for kind, url in self.model_dump().items() if url}


class CampaignOptions(_Model):
    concurrency: int = Field(1, ge=1, le=500)
    calls_per_second: float = Field(1.0, gt=0, le=100)
    window: Window | None = None
    max_calls: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    retry: RetryOptions = Field(default_factory=RetryOptions)
    webhooks: InlineWebhooks = Field(default_factory=InlineWebhooks)
    machine_detection: Any = False
    ring_timeout: int | None = Field(None, ge=5, le=600)

    _amd = field_validator("machine_detection")(lambda v: machine_detection_mode(v))


class ContactSpec(_Model):
    phone: Phone
    name: str | None = Field(None, max_length=200)
    context: dict[str, Any] = Field(default_factory=dict)

    _phone = field_validator("phone")(lambda v: normalize_phone(v))


class CampaignSpec(_Model):
    """`POST /api/v1/campaigns`."""

    name: str | None = Field(None, max_length=200)
    workflow_id: PathId
    user_id: PathId
    provider: Literal["twilio", "vonage", "telnyx", "plivo"] | None = None
    from_: Phone | None = Field(None, alias="from")
    contacts: list[ContactSpec] = Field(default_factory=list, max_length=MAX_CONTACTS)
    contacts_csv: str | None = None
    options: CampaignOptions = Field(default_factory=CampaignOptions)

    _ids = field_validator("workflow_id", "user_id")(lambda v: _path_id(v))
    _from = field_validator("from_")(lambda v: None if v is None else normalize_phone(v))

    @model_validator(mode="after")
    def _csv(self) -> CampaignSpec:
        if self.contacts_csv is not None:
            self.contacts = [*self.contacts, *parse_contacts_csv(self.contacts_csv)]
            self.contacts_csv = None
        if not self.contacts:
            raise ValueError("a campaign needs at least one contact (contacts or contacts_csv)")
        if len(self.contacts) > MAX_CONTACTS:
            raise ValueError(f"a campaign has at most {MAX_CONTACTS} contacts")
        return self

    def unique_contacts(self) -> tuple[list[ContactSpec], int]:
        """The contacts, each phone number once (first wins), and how many were dropped."""
        seen: set[str] = set()
        out = []
        for contact in self.contacts:
            if contact.phone not in seen:
                seen.add(contact.phone)
                out.append(contact)
        return out, len(self.contacts) - len(out)


_PHONE_COLUMNS = ("phone", "phone_number", "phonenumber", "number", "to", "msisdn")
_NAME_COLUMNS = ("name", "contact_name", "full_name")


def parse_contacts_csv(text: str) -> list[ContactSpec]:
    """Contacts from CSV with a header row: a phone column (`phone`, `phone_number`, `number`,
    `to`), an optional `name`, an optional `context` (a JSON object), and any other column
    into the contact's context. Raises ValueError naming the line."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames:
        raise ValueError("contacts_csv: no header row")
    columns = {re.sub(r"[\s-]+", "_", name.strip().lower()): name for name in reader.fieldnames if name is not None}
    phone_col = next((columns[c] for c in _PHONE_COLUMNS if c in columns), None)
    if phone_col is None:
        raise ValueError(f"contacts_csv: no phone column (one of {', '.join(_PHONE_COLUMNS)})")
    name_col = next((columns[c] for c in _NAME_COLUMNS if c in columns), None)
    context_col = columns.get("context")
    contacts = []
    for line, row in enumerate(reader, start=2):
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue
        context: dict[str, Any] = {}
        for column, value in row.items():
            if column in (phone_col, name_col, context_col) or column is None:
                continue
            if value not in (None, ""):
                context[column.strip()] = value
        if context_col and (row.get(context_col) or "").strip():
            try:
                extra = json.loads(row[context_col])
            except ValueError:
                raise ValueError(f"contacts_csv line {line}: context is not JSON") from None
            if not isinstance(extra, dict):
                raise ValueError(f"contacts_csv line {line}: context must be a JSON object")
            context.update(extra)
        try:
            contacts.append(
                ContactSpec(
                    phone=(row.get(phone_col) or "").strip(),
                    name=(row.get(name_col) or "").strip() or None if name_col else None,
                    context=context,
                )
            )
        except ValidationError as error:
            raise ValueError(f"contacts_csv line {line}: {describe(error)}") from None
    if not contacts:
        raise ValueError("contacts_csv: no contacts after the header row")
    return contacts


def parse_call(data: Any) -> CallSpec:
    try:
        return CallSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe(error)) from None


def parse_campaign(data: Any) -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe(error)) from None
