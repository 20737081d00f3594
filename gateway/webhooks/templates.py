"""Double-brace templates for webhook URLs, headers, bodies and auth values.

Syntax, inside any string of a subscription's `url`, `headers`, `payload_template` or `auth`:

- `{{path}}`: a dotted path into the template context, e.g. `{{initial_context.tenant}}`,
  `{{call.duration}}`, `{{gathered_context.items.0.sku}}` (a number indexes a list).
  Roots: `workflow_run_id`, `workflow_run_name`, `workflow_id`, `workflow_name`, `user_id`,
  `campaign_id`, `call_time`, `event` (the event envelope: `type`, `timestamp`, `data`), `call`,
  `initial_context`, `gathered_context`, `cost_info`, `annotations`, `recording_url`,
  `user_recording_url`, `bot_recording_url`, `transcript_url`, and `secret.NAME` (from the
  secrets mapping, never from the context).
- `{{path | default}}`: the default when the path is missing or null. The default is a literal:
  a quoted string (`"n/a"` or `'n/a'`), a number, `true`/`false`/`null`, or bare text; the
  Jinja spelling `{{path | default('n/a')}}` (as in Dograh templates) means the same.
- `{{fn(a, b)}}`: a function call, only where the caller enables functions (header auth's
  `hmac_sha256`); each argument is a path or a quoted string, joined with `+`.

Rendering: a string that is exactly one placeholder keeps the value's JSON type (numbers stay
numbers, objects stay objects, missing is null). Inside longer text the value becomes text:
strings as is, null as empty, everything else as compact JSON. In a URL each placeholder's text is
percent-encoded (`/`, `?`, `&`, `#` included), so a value fills one path segment or query value and
cannot change the URL's shape. Dicts and lists are walked recursively; keys render as text.

Only mappings and lists are walked, never object attributes, so a template cannot reach into
Python objects. Secrets used while rendering are recorded on the `Renderer` so that a `Redactor`
can remove them from anything logged or stored.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from gateway.errors import GatewayError
from gateway.redact import Redactor  # noqa: F401 - re-exported: the renderer's callers redact with it

CONTEXT_ROOTS: frozenset[str] = frozenset(
    {
        "workflow_run_id",
        "workflow_run_name",
        "workflow_id",
        "workflow_name",
        "user_id",
        "campaign_id",
        "call_time",
        "event",
        "call",
        "initial_context",
        "gathered_context",
        "cost_info",
        "annotations",
        "recording_url",
        "user_recording_url",
        "bot_recording_url",
        "transcript_url",
        "secret",
    }
)
"""Names a placeholder path may start with (`secret` resolves from the secrets mapping)."""

_FREE_FORM = frozenset({"initial_context", "gathered_context", "cost_info", "annotations"})


@lru_cache(maxsize=1)
def context_fields() -> dict[str, frozenset[str] | None]:
    """What may follow each root: the names allowed as the second segment (empty: nothing may
    follow), or None for free-form data. From the call record's and event envelope's own shapes,
    so a template naming a field that cannot exist (`{{call.stat}}`) is refused when loaded."""
    from datetime import datetime

    from gateway.calls.record import CallRecord
    from gateway.events.envelope import Event

    leaves = CONTEXT_ROOTS - _FREE_FORM - {"event", "call", "secret"}
    fields: dict[str, frozenset[str] | None] = {root: frozenset() for root in leaves}
    fields.update({root: None for root in _FREE_FORM})
    fields["call"] = frozenset(CallRecord(workflow_run_id="-").to_dict())
    fields["event"] = frozenset(Event("-", None, datetime.now(UTC)).envelope())
    return fields


# Inside these, anything goes: the call's JSON fields and the event's data are free-form.
_FREE_BELOW = {
    ("call", name) for name in ("initial_context", "gathered_context", "annotations", "cost_info", "media")
} | {("event", "data")}

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\Z", re.DOTALL)
_JINJA_DEFAULT = re.compile(r"default\s*\((.*)\)\Z", re.DOTALL)
_MISSING = object()


class TemplateError(GatewayError, ValueError):
    """A template that cannot be parsed or rendered; the message names where it is."""


@dataclass(frozen=True)
class Literal:
    """A quoted string inside a function call."""

    text: str


@dataclass(frozen=True)
class Placeholder:
    """One parsed `{{...}}`: a path with an optional default, or a function call."""

    source: str
    path: tuple[str, ...] = ()
    default: Any = _MISSING
    function: str | None = None
    arguments: tuple[tuple[tuple[str, ...] | Literal, ...], ...] = ()

    @property
    def has_default(self) -> bool:
        """Whether the placeholder carries `| default`."""
        return self.default is not _MISSING


Part = str | Placeholder


def _parse_default(text: str) -> Any:
    text = text.strip()
    jinja = _JINJA_DEFAULT.match(text)
    if jinja:
        text = jinja.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        if text[0] == '"':
            try:
                return json.loads(text)
            except ValueError:
                return text[1:-1]
        return text[1:-1]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return text


def _parse_path(text: str, source: str) -> tuple[str, ...]:
    segments = tuple(text.strip().split("."))
    if not segments or not segments[0]:
        raise TemplateError(f"empty placeholder {{{{{source}}}}}")
    if not _ROOT.match(segments[0]):
        raise TemplateError(f"malformed path {text.strip()!r} in {{{{{source}}}}}")
    for segment in segments[1:]:
        if not _SEGMENT.match(segment):
            raise TemplateError(f"malformed path {text.strip()!r} in {{{{{source}}}}}")
    return segments


def _split_outside_quotes(text: str, separator: str, source: str) -> list[str]:
    pieces, current, quote_char = [], [], ""
    for char in text:
        if quote_char:
            current.append(char)
            if char == quote_char:
                quote_char = ""
        elif char in "\"'":
            quote_char = char
            current.append(char)
        elif char == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote_char:
        raise TemplateError(f"unterminated string in {{{{{source}}}}}")
    pieces.append("".join(current))
    return pieces


def _parse_term_list(text: str, source: str) -> tuple[tuple[str, ...] | Literal, ...]:
    terms: list[tuple[str, ...] | Literal] = []
    for raw in _split_outside_quotes(text, "+", source):
        raw = raw.strip()
        if not raw:
            raise TemplateError(f"empty argument in {{{{{source}}}}}")
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            terms.append(Literal(raw[1:-1]))
        else:
            terms.append(_parse_path(raw, source))
    return tuple(terms)


def _parse_placeholder(body: str) -> Placeholder:
    source = body.strip()
    call = _CALL.match(source)
    if call:
        arguments = tuple(
            _parse_term_list(argument, source) for argument in _split_outside_quotes(call.group(2), ",", source)
        )
        return Placeholder(source=source, function=call.group(1), arguments=arguments)
    path_text, bar, default_text = source.partition("|")
    path = _parse_path(path_text, source)
    default = _parse_default(default_text) if bar else _MISSING
    return Placeholder(source=source, path=path, default=default)


@lru_cache(maxsize=4096)
def parse(template: str) -> tuple[Part, ...]:
    """Split a template string into literal text and placeholders; raises `TemplateError`."""
    parts: list[Part] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        literal = template[position : match.start()]
        if "{{" in literal:
            raise TemplateError("'{{' without a matching '}}'")
        if literal:
            parts.append(literal)
        parts.append(_parse_placeholder(match.group(1)))
        position = match.end()
    rest = template[position:]
    if "{{" in rest:
        raise TemplateError("'{{' without a matching '}}'")
    if rest:
        parts.append(rest)
    return tuple(parts)


def _check_placeholder(placeholder: Placeholder, roots: Collection[str], functions: Collection[str]) -> None:
    if placeholder.function is not None:
        if placeholder.function not in functions:
            raise TemplateError(f"unknown function {placeholder.function!r} in {{{{{placeholder.source}}}}}")
        for argument in placeholder.arguments:
            for term in argument:
                if not isinstance(term, Literal):
                    _check_path(term, placeholder, roots)
        return
    _check_path(placeholder.path, placeholder, roots)


def _check_path(path: tuple[str, ...], placeholder: Placeholder, roots: Collection[str]) -> None:
    if path[0] not in roots:
        raise TemplateError(f"unknown variable {path[0]!r} in {{{{{placeholder.source}}}}}")
    if path[0] == "secret" and (len(path) != 2 or not _SECRET_NAME.match(path[1])):
        raise TemplateError(f"secrets are written {{{{secret.NAME}}}}, not {{{{{placeholder.source}}}}}")
    allowed = context_fields().get(path[0]) if path[0] in CONTEXT_ROOTS else None
    if allowed is None or len(path) == 1:
        return
    if not allowed:
        raise TemplateError(f"{path[0]!r} is a single value, nothing follows it: {{{{{placeholder.source}}}}}")
    if path[1] not in allowed:
        close = difflib.get_close_matches(path[1], sorted(allowed), n=1)
        hint = f"; did you mean {path[0]}.{close[0]}?" if close else f"; {path[0]} has {', '.join(sorted(allowed))}"
        raise TemplateError(f"{path[0]} has no field {path[1]!r} in {{{{{placeholder.source}}}}}{hint}")
    if len(path) > 2 and (path[0], path[1]) not in _FREE_BELOW:
        raise TemplateError(f"{path[0]}.{path[1]} is a single value, nothing follows it: {{{{{placeholder.source}}}}}")


def validate_template(
    template: Any,
    location: str,
    *,
    roots: Collection[str] = CONTEXT_ROOTS,
    functions: Collection[str] = (),
) -> None:
    """Check every string in `template` (recursively, keys too) parses and names known variables.

    Raises `TemplateError` whose message starts with `location` (e.g. `payload_template.run_id`).
    """
    if isinstance(template, str):
        try:
            for part in parse(template):
                if isinstance(part, Placeholder):
                    _check_placeholder(part, roots, functions)
        except TemplateError as error:
            raise TemplateError(f"{location}: {error}" if location else str(error)) from None
    elif isinstance(template, Mapping):
        for key, value in template.items():
            where = f"{location}.{key}" if location else str(key)
            validate_template(key, f"{where} (key)", roots=roots, functions=functions)
            validate_template(value, where, roots=roots, functions=functions)
    elif isinstance(template, (list, tuple)):
        for index, value in enumerate(template):
            validate_template(value, f"{location}[{index}]", roots=roots, functions=functions)


def placeholder_paths(template: Any) -> set[tuple[str, ...]]:
    """Every context path a template reads (function arguments included), e.g.
    `("initial_context", "tenant")` or `("secret", "TOKEN")`."""
    paths: set[tuple[str, ...]] = set()
    if isinstance(template, str):
        for part in parse(template):
            if not isinstance(part, Placeholder):
                continue
            if part.function is None:
                paths.add(part.path)
            else:
                paths.update(term for argument in part.arguments for term in argument if not isinstance(term, Literal))
    elif isinstance(template, Mapping):
        for key, value in template.items():
            paths |= placeholder_paths(key) | placeholder_paths(value)
    elif isinstance(template, (list, tuple)):
        for value in template:
            paths |= placeholder_paths(value)
    return paths


def secret_names(template: Any) -> set[str]:
    """The `secret.NAME` names a template refers to (so start-up can check they are all set)."""
    return {path[1] for path in placeholder_paths(template) if len(path) == 2 and path[0] == "secret"}


def as_text(value: Any) -> str:
    """A value inside longer text: null as empty, strings as is, the rest as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except ValueError:
        return str(value)


def _encode_url_part(text: str) -> str:
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def _walk(value: Any, path: Sequence[str]) -> Any:
    for segment in path:
        if isinstance(value, Mapping):
            if segment not in value:
                return _MISSING
            value = value[segment]
        elif (
            isinstance(value, (list, tuple)) and segment.isdigit() and len(segment) <= 18
        ):  # int() refuses 4300+ digits
            index = int(segment)
            if index >= len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


class Renderer:
    """Renders templates against one context and secrets mapping, remembering secrets it used.

    `extra_roots` adds roots (header auth's `_auth`, `_request`, `vars`); `functions` maps a
    function name to a callable taking and returning text.
    """

    def __init__(
        self,
        context: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        *,
        extra_roots: Mapping[str, Any] | None = None,
        functions: Mapping[str, Callable[..., str]] | None = None,
    ) -> None:
        self._context = context
        self._secrets = secrets or {}
        self._extra = dict(extra_roots or {})
        self._functions = dict(functions or {})
        self.used_secrets: set[str] = set()

    def with_roots(
        self,
        extra_roots: Mapping[str, Any],
        functions: Mapping[str, Callable[..., str]] | None = None,
    ) -> Renderer:
        """A renderer with more roots, sharing this one's context, secrets and used secrets."""
        other = Renderer(
            self._context,
            self._secrets,
            extra_roots={**self._extra, **extra_roots},
            functions={**self._functions, **(functions or {})},
        )
        other.used_secrets = self.used_secrets
        return other

    def _lookup(self, path: tuple[str, ...], location: str) -> Any:
        root = path[0]
        if root == "secret":
            name = path[1] if len(path) == 2 else ""
            if name not in self._secrets:
                raise TemplateError(f"{location}: secret {name!r} is not set")
            value = self._secrets[name]
            self.used_secrets.add(value)
            return value
        if root in self._extra:
            return _walk(self._extra[root], path[1:])
        if root not in CONTEXT_ROOTS:
            raise TemplateError(f"{location}: unknown variable {root!r}")
        return _walk(self._context, path)

    def _resolve(self, placeholder: Placeholder, location: str) -> Any:
        if placeholder.function is not None:
            function = self._functions.get(placeholder.function)
            if function is None:
                raise TemplateError(f"{location}: unknown function {placeholder.function!r}")
            arguments = [
                "".join(self._term_text(term, location) for term in argument) for argument in placeholder.arguments
            ]
            try:
                return function(*arguments)
            except TypeError as error:
                raise TemplateError(f"{location}: {placeholder.function}: {error}") from None
        value = self._lookup(placeholder.path, location)
        if value is _MISSING or value is None:
            return placeholder.default if placeholder.has_default else None
        return value

    def _term_text(self, term: tuple[str, ...] | Literal, location: str) -> str:
        if isinstance(term, Literal):
            return term.text
        value = self._lookup(term, location)
        return "" if value is _MISSING else as_text(value)

    def _parts(self, template: str, location: str) -> tuple[Part, ...]:
        try:
            return parse(template)
        except TemplateError as error:
            raise TemplateError(f"{location}: {error}") from None

    def value(self, template: Any, location: str = "template") -> Any:
        """Render recursively, keeping JSON types for strings that are exactly one placeholder."""
        if isinstance(template, str):
            parts = self._parts(template, location)
            if len(parts) == 1 and isinstance(parts[0], Placeholder):
                return self._resolve(parts[0], location)
            return self.text(template, location)
        if isinstance(template, Mapping):
            return {
                self.text(str(key), f"{location} (key)"): self.value(item, f"{location}.{key}")
                for key, item in template.items()
            }
        if isinstance(template, (list, tuple)):
            return [self.value(item, f"{location}[{index}]") for index, item in enumerate(template)]
        return template

    def text(self, template: str, location: str = "template") -> str:
        """Render a string template to text."""
        return "".join(
            part if isinstance(part, str) else as_text(self._resolve(part, location))
            for part in self._parts(template, location)
        )

    def url(self, template: str, location: str = "url") -> str:
        """Render a URL template, percent-encoding each placeholder's text."""
        return "".join(
            part if isinstance(part, str) else _encode_url_part(as_text(self._resolve(part, location)))
            for part in self._parts(template, location)
        )
