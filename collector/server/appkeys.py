"""Typed keys for everything stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from collector.config import Settings
from collector.postgres import PostgresQueue
from collector.queue import JobQueue
from collector.server.live import LiveHub
from collector.server.metrics import ServiceMetrics
from collector.server.state import ServiceState
from collector.server.systemd import Notifier
from collector.stats.store import StatsStore
from collector.worker import Worker

SETTINGS = web.AppKey("settings", Settings)
STATE = web.AppKey("state", ServiceState)
QUEUE: web.AppKey[JobQueue] = web.AppKey("queue")
#: The same queue in the PostgreSQL mode only (its node name, leadership, readiness).
POSTGRES = web.AppKey("postgres", PostgresQueue)
WORKER = web.AppKey("worker", Worker)
STATS = web.AppKey("stats", StatsStore)
NOTIFIER = web.AppKey("notifier", Notifier)
METRICS = web.AppKey("metrics", ServiceMetrics)
LIVE = web.AppKey("live", LiveHub)
