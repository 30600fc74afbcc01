"""Helpers shared by the tests: servers in subprocesses, handlers loaded by spec, readers
of what they recorded. Nothing here is a test, and no test module imports another."""
