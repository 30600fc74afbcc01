"""collector: durable, ordered ingest of Rocket League statistics."""

from __future__ import annotations

from collector.errors import PermanentError
from collector.jobs import Job

__all__ = ["Job", "PermanentError", "__version__"]
__version__ = "0.1.0"
