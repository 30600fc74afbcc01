"""Development scripts: the benchmark harness and its helpers (not installed)."""
