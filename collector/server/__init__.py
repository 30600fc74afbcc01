"""The daemon's HTTP side: the app factory, its routes, running it under systemd, metrics."""
