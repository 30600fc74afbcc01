"""The dashboard's files: one page shell, its scripts and styles, vendored libraries.

Package data only (no Python logic): collector.server.pages serves them. The libraries
in static/vendor/ come from the npm registry, pinned in static/vendor/vendor.json with
their licences beside them (scripts/vendor_frontend.py updates and checks them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
#: The HTML shell every page is rendered from.
PAGE_TEMPLATE: Final = STATIC_DIR / "page.html"
