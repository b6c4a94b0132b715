"""Log set-up: `--log-level`, `--log-format text|json` (one JSON object a line, for collectors)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "sigv4_proxy.access"

access_log = logging.getLogger(ACCESS_LOGGER)
Fields = Callable[[], dict[str, Any]]


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, plus the record's structured `fields` (access log, diagnosis)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def access_line(self, created: float, message: str, fields: Fields) -> str:
        """What format() makes of an access-log record, without the record."""
        return json.dumps(_entry(created, "info", ACCESS_LOGGER, message, fields()), default=str)


def _entry(created: float, level: str, logger: str, message: str, fields: object) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if isinstance(fields, dict):
        entry.update(fields)
    return entry


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the date and time formatted once a second instead of on every line
    (strftime was a tenth of the access log's cost per request)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._stamp},{int((created - second) * 1000):03d}"

    def access_line(self, created: float, message: str, fields: Fields) -> str:
        """What format() makes of an access-log record, without the record."""
        return f"{self._time(created)} INFO {ACCESS_LOGGER}: {message}"


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the access log in batches: one write (and flush) per request cost more CPU than the
    rest of a small GET's own work (bench: ~80 of ~330 µs). A batch goes out when it holds
    `capacity` lines, `interval` seconds after the last write, or with any warning or error."""

    def __init__(self, capacity: int = 256, interval: float = 0.5) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._capacity = capacity
        self.interval = interval
        self._written = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: a broken record must not break the caller
            self.handleError(record)
            return
        self.add(line, urgent=record.levelno >= logging.WARNING)

    def add(self, line: str, urgent: bool = False) -> None:
        self._lines.append(line)
        if urgent or len(self._lines) >= self._capacity or time.monotonic() - self._written >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._lines:
                self.stream.write("\n".join(self._lines) + "\n")
                self._lines.clear()
            self.stream.flush()
            self._written = time.monotonic()


class _Direct:
    """The access log's handler when configure_logging set it up, for log_access's short cut."""

    handler: BatchedStreamHandler | None = None


def log_access(message: str, fields: Fields) -> None:
    """One access-log line; `fields` builds the structured fields for JSON output when needed.

    With the set-up of configure_logging (our batched handler the access logger's only one, no
    filter), the line is formatted straight into the batch: a LogRecord and logging's dispatch
    cost ~5 us a request, a twentieth of a small GET. Any other set-up (tests capturing records,
    a program embedding the proxy) gets an ordinary record, with identical text."""
    handler = _Direct.handler
    if (
        handler is not None
        and access_log.handlers == [handler]
        and not access_log.filters
        and not handler.filters
        and access_log.isEnabledFor(logging.INFO)
        and isinstance(handler.formatter, (TextFormatter, JsonFormatter))
    ):
        try:
            line = handler.formatter.access_line(time.time(), message, fields)
        except Exception:  # as logging does: a line that cannot be formatted never breaks a request
            logging.getLogger("sigv4_proxy").exception("cannot format an access-log line")
            return
        handler.add(line)
    elif access_log.isEnabledFor(logging.INFO):
        access_log.info("%s", message, extra={"fields": fields()})


def flush_access_log() -> None:
    for handler in access_log.handlers:
        handler.flush()


async def flush_access_log_periodically(interval: float = 0.5) -> None:
    """Runs beside the server: an idle proxy's last access lines appear within `interval`."""
    while True:
        await asyncio.sleep(interval)
        flush_access_log()


def configure_logging(level: str, log_format: str = "text") -> None:
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    # The Logging HOWTO's "Optimization": no record field we never print (the caller's file and
    # line, thread, process) is collected, which halves the cost of each access-log record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    batched = BatchedStreamHandler()
    batched.setFormatter(formatter)
    access_log.addHandler(batched)
    access_log.propagate = False
    _Direct.handler = batched
    logging.getLogger("botocore").setLevel(logging.WARNING)  # its debug output includes request details
    # A failed refresh is reported once by proxy.credentials; botocore's own copy has a traceback.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)
