"""Logging: one logger per module, the call SID carried into every record of a call."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")


class CallContextFilter(logging.Filter):
    """Stamps each record with the call SID of the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = call_sid_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "call_sid": getattr(record, "call_sid", "-"),
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "INFO", fmt: str = "text", *, worker: int | None = None) -> None:
    """Install one stderr handler on the root logger (idempotent).

    `worker`: the index of a `bridge serve --workers N` process, shown on each of its lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"worker {worker} "
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)-7s {who}%(name)s [%(call_sid)s] %(message)s"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bridge", False):
            root.removeHandler(old)
    handler._bridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def mask_number(number: str) -> str:
    """Phone numbers in logs keep their country code and last two digits only."""
    if len(number) <= 5:
        return "***"
    return number[:3] + "*" * (len(number) - 5) + number[-2:]
