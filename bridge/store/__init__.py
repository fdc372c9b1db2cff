"""The call log: every call, its turns and events, in SQLite or PostgreSQL; the live feed.

`CallLog` is the entry point (see `calllog.py`); `bridge.web` serves it over HTTP.
"""

from __future__ import annotations

from bridge.store.calllog import CallLog, StoreRecorder
from bridge.store.live import LiveFeed
from bridge.store.pricing import PriceTable

__all__ = ["CallLog", "LiveFeed", "PriceTable", "StoreRecorder"]
