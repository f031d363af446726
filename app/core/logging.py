"""JSON-lines logs with the request id, and nothing in them that identifies a person or grants access.

Every line is one JSON object. The access line is built from known-safe fields (route template,
method, status, duration); any other message and traceback is scrubbed of IP addresses and bearer
tokens before it is written, because exception texts quote whatever they were given.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import logging.config
import re
import time
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_JWS = re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group(0).split("%")[0])
    except ValueError:
        return match.group(0)  # a time of day or other colon-separated text
    return "[ip]"


def scrub(text: str) -> str:
    text = _JWS.sub("[token]", text)
    text = _BEARER.sub(r"\1[token]", text)
    text = _IPV4.sub("[ip]", text)
    return _IPV6.sub(_ipv6, text)


SAFE = "safe"
"""`extra={SAFE: True, "fields": {...}}` marks a record whose message and fields need no scrubbing."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        safe = getattr(record, SAFE, False)
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message if safe else scrub(message),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields if safe else {k: scrub(str(v)) for k, v in fields.items()})
        if record.exc_info:
            entry["error"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for the API and the worker; also uvicorn's `log_config`. uvicorn's access log
    (which prints client addresses) is silenced: app.core.http.Edge writes one line per request."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
            "null": {"class": "logging.NullHandler"},
        },
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "CRITICAL", "handlers": ["null"], "propagate": False},
        },
        "root": {"level": level, "handlers": ["stdout"]},
    }


def configure(level: str = "INFO") -> None:
    logging.config.dictConfig(config(level))
