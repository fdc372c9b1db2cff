"""The call log over HTTP: JSON API, live feed (SSE) and dashboard, behind the admin token."""

from __future__ import annotations

from starlette.routing import BaseRoute

from bridge.recording.store import RecordingStore, store_from_settings
from bridge.settings import Settings
from bridge.store.calllog import CallLog
from bridge.web.api import Api
from bridge.web.auth import Guard
from bridge.web.dashboard import Dashboard

__all__ = ["admin_routes"]


def admin_routes(
    settings: Settings,
    call_log: CallLog,
    *,
    stream_seconds: float = 30.0,
    recordings: RecordingStore | None = None,
) -> list[BaseRoute]:
    """Routes to mount beside the Twilio ones (`create_app(..., routes=...)`).

    `stream_seconds` bounds each live-feed response (browsers reconnect), so a shutdown never
    waits longer than that for open dashboards. `recordings` is where the API finds calls' WAVs
    (default: the store the settings name; pass the bridge's own so one client serves both).
    """
    guard = Guard(settings)
    if recordings is None:
        recordings = store_from_settings(settings.recordings_dir, settings.recordings_url)
    api = Api(call_log, guard, recordings=recordings, stream_seconds=stream_seconds)
    return [*api.routes(), *Dashboard(call_log, guard).routes()]
