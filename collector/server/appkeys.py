"""Typed keys for everything stored on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from collector.config import Settings
from collector.queue import JobQueue
from collector.server.live import LiveHub
from collector.server.metrics import ServiceMetrics
from collector.server.state import ServiceState
from collector.server.systemd import Notifier
from collector.stats.store import StatsStore
from collector.worker import Worker

if TYPE_CHECKING:  # the PostgreSQL mode is optional (asyncpg: pip install '.[postgres]')
    from collector.postgres import PostgresQueue

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", ServiceState)
QUEUE: web.AppKey[JobQueue] = web.AppKey("queue")
#: The same queue in the PostgreSQL mode only (its node name, leadership, readiness).
POSTGRES: web.AppKey[PostgresQueue] = web.AppKey("postgres")
WORKER = web.AppKey("worker", Worker)
STATS = web.AppKey("stats", StatsStore)
NOTIFIER = web.AppKey("notifier", Notifier)
METRICS = web.AppKey("metrics", ServiceMetrics)
LIVE = web.AppKey("live", LiveHub)
