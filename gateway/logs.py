"""Log output: structured JSON lines (or plain text on a terminal), the run id on every line
that concerns a call, and every known secret value redacted before anything is written."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar

from gateway import jsontext
from gateway.redact import REDACTED, Redactor  # noqa: F401 - REDACTED: the log mark, for importers

RUN_ID: ContextVar[str | None] = ContextVar("run_id", default=None)


class RedactSecrets(logging.Filter):
    """Replaces every configured secret value (8+ characters, in any encoding `Redactor` knows)
    in the rendered message and exception text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self._redactor = Redactor()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Redact these values too (e.g. development secrets generated after start-up)."""
        self.secrets = sorted({*self.secrets, *(s for s in secrets if s and len(s) >= 8)}, key=len, reverse=True)
        self._redactor = Redactor(self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._redactor:
            return True
        record.msg, record.args = (
            self._redactor.text(record.getMessage()),
            None,
        )  # formatted once: the formatter reads it as is
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.text(record.exc_text)
        return True


class RunIdFilter(logging.Filter):
    """Stamps `run_id` from the current call's context onto each record (unless it has one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = RUN_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, run_id, plus exception text.

    Written with `jsontext` (compact), and the seconds of the timestamp formatted once per
    second: at a line per callback this formatter was a fifth of a callback's handling."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # under the handler's lock: one thread at a time
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id:
            entry["run_id"] = run_id
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return jsontext.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        run_id = getattr(record, "run_id", None)
        return f"{text} [run={run_id}]" if run_id and "run=" not in text else text


def configure_logging(*, fmt: str = "auto", level: str = "info", secrets: Iterable[str] = ()) -> RedactSecrets:
    """Route the gateway's and uvicorn's logs through one handler on stderr; returns the
    redaction filter so later secrets can be added to it."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    # Neither format prints source lines, threads or processes: skip collecting them on every
    # record (the logging HOWTO's "Optimization" section; a callback line costs ~40 % less).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = RedactSecrets(secrets)
    handler.addFilter(RunIdFilter())
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the gateway logs one line per request itself
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return redactor
