"""Settings: embedded defaults < TOML file < COLLECTOR_<SECTION>_<KEY> environment < flags."""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from collector.errors import ConfigError

ENV_PREFIX = "COLLECTOR_"
#: Environment variables with the prefix that are not settings.
ENV_NOT_SETTINGS = frozenset({"COLLECTOR_CONFIG"})


def default_data_dir() -> Path:
    """`$STATE_DIRECTORY` when systemd sets it, else ./collector-data."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        # systemd may list several directories separated by colons; the first is ours.
        return Path(state.split(":")[0])
    return Path("collector-data")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """[server]: the HTTP side."""

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=default_data_dir)
    #: Largest request body, after gzip decompression, in bytes.
    max_body_bytes: int = 1_048_576
    #: Deepest nesting of arrays/objects accepted inside one event.
    max_depth: int = 32
    #: Bearer token; prefer token_file (or systemd's LoadCredential=token).
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    #: Seconds to let in-flight requests and the current job finish on SIGTERM.
    shutdown_timeout: float = 10.0
    #: Seconds a client has to send a complete request head (from connecting, or from its
    #: previous answer: also how long an idle kept-alive connection stays open), and then
    #: its whole body (else 408 request_timeout). Slow clients cannot hold connections.
    read_timeout: float = 60.0
    #: The names in the Host header the daemon answers to (DNS rebinding: a page that
    #: rebinds its own name to this server's address sends its own name). Empty: the
    #: listening address, localhost, 127.0.0.1, [::1], the host name, its .local name and
    #: its fully qualified name, and any address the client actually connected to.
    #: ["*"] turns the check off (with a warning). Entries are names or addresses,
    #: without port; "*.example.org" takes every name under example.org.
    allowed_hosts: tuple[str, ...] = ()
    #: Origins (scheme://host[:port]) whose pages may call the API from a browser:
    #: answered with CORS headers. None by default.
    cors_origins: tuple[str, ...] = ()
    #: PEM files: the certificate (chain) and its private key. Both set: HTTPS only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """[queue]: the durable FIFO."""

    #: "full": fsync every commit (survives power loss). "normal": survives a crash of
    #: the process (kill -9), but the last commits may be lost on power loss.
    durability: Literal["full", "normal"] = "full"
    #: Pending jobs above which POSTs get 503 queue_full.
    max_pending: int = 1_000_000
    #: Acknowledgements are committed in groups at most this often (0 = one by one).
    ack_interval_ms: int = 50
    #: How long an Idempotency-Key is remembered.
    idempotency_ttl_hours: float = 48.0
    #: Largest size of the queue file in bytes (0 = as large as the disk allows); past
    #: it, POSTs get 507 insufficient_storage until the worker has made room.
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """[worker]: the single consumer."""

    handlers: tuple[str, ...] = ("stats",)
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    #: A handler call that takes longer fails (and is retried).
    handler_timeout: float = 60.0
    #: Jobs handed at most in one run to handlers that apply runs (the stats handler
    #: commits a run in one transaction); 1 = always one job at a time.
    batch_max: int = 512


@dataclass(frozen=True, slots=True)
class LogSettings:
    """[log]: structlog output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """[archive]: the `archive` handler's daily JSON-lines files in <data_dir>/archive."""

    #: Day files older than this many days (UTC) are gzip-compressed; the newest never.
    compress_after_days: int = 1


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """[forward]: the `forward` handler, which POSTs each event to another server."""

    #: Where to POST (http:// or https://); required when the handler is configured.
    url: str | None = None
    #: Seconds for one POST, connection included; a timeout is retried.
    timeout: float = 10.0
    #: Bearer token sent to `url`, if it wants one.
    token: str | None = field(default=None, repr=False)
    #: Idempotency-Key is this prefix followed by the event's seq.
    key_prefix: str = "collector-"


@dataclass(frozen=True, slots=True)
class StatsSettings:
    """[stats]: the statistics (stats.db) and how they are read."""

    #: A match with no event for this many minutes is closed.
    idle_close_minutes: float = 10.0
    #: A player's next match starting this many minutes or more after the end of their
    #: previous one opens a new session (less: the same session).
    session_gap_minutes: float = 30.0


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """[postgres]: several nodes on one PostgreSQL (docs/scale-out.md); off when unset."""

    #: postgresql://user:password@host:port/dbname; prefer dsn_file (or systemd's
    #: LoadCredential=postgres-dsn). Never logged: its password is masked.
    dsn: str | None = field(default=None, repr=False)
    dsn_file: Path | None = None
    #: This node's name in GET /v1/queue and the leader election (default host:port).
    node: str | None = None


#: The PostgreSQL mode's driver is an optional dependency (the `postgres` extra).
POSTGRES_NEEDS_ASYNCPG: Final = ("[postgres] dsn: the PostgreSQL mode needs the asyncpg "
                                 "driver: pip install 'collector[postgres]'")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the daemon."""

    server: ServerSettings = field(default_factory=ServerSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)

    def postgres_dsn(self) -> str | None:
        """The DSN from `dsn`, `dsn_file` or systemd's credential `postgres-dsn`; None
        for the embedded SQLite mode."""
        p = self.postgres
        dsn = p.dsn
        if not dsn:
            path = p.dsn_file
            if path is None:
                creds = os.environ.get("CREDENTIALS_DIRECTORY")
                if creds and (Path(creds) / "postgres-dsn").is_file():
                    path = Path(creds) / "postgres-dsn"
            if path is None:
                return None
            dsn = _read_secret(path, "postgres.dsn_file", "DSN")
            if not _dsn_ok(dsn):
                raise ConfigError(f"postgres.dsn_file: {path} does not hold a "
                                  "postgresql:// URL")
        if importlib.util.find_spec("asyncpg") is None:
            raise ConfigError(POSTGRES_NEEDS_ASYNCPG)
        return dsn

    def token_value(self) -> str | None:
        """The bearer token from `token`, `token_file` or systemd's credential, if any."""
        if self.server.token:
            return self.server.token
        path = self.server.token_file
        if path is None:
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if creds and (Path(creds) / "token").is_file():
                path = Path(creds) / "token"
        if path is None:
            return None
        return read_token_file(path, "server.token_file")


def read_token_file(path: Path, what: str) -> str:
    """The token in `path` (whitespace around it ignored); `what` names the setting or
    flag in the one-line error for a missing, unreadable or empty file."""
    return check_token(_read_secret(path, what, "token"), f"{what}: {path}")


def _read_secret(path: Path, what: str, kind: str) -> str:
    """The text of a credential file, stripped; one-line ConfigErrors naming `what`."""
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, not a {kind} file")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not a text file") from None
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def _dsn_ok(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://")) and dsn.isprintable()


def mask_dsn(dsn: str) -> str:
    """`dsn` with its password (in the URL or a `password=` parameter) replaced by ***."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "***"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostinfo}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else part
        for part in parts.query.split("&") if part
        for k in [part.partition("=")[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_token(token: str, what: str) -> str:
    """`token` when it can travel in an Authorization header: one line, no spaces, no
    control characters; else a one-line ConfigError naming `what`."""
    if not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(f"{what}: the token holds a space, a line break or a control "
                          "character (one line, no spaces, expected)")
    return token


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "queue": QueueSettings,
    "worker": WorkerSettings,
    "log": LogSettings,
    "archive": ArchiveSettings,
    "forward": ForwardSettings,
    "stats": StatsSettings,
    "postgres": PostgresSettings,
}


def _convert(name: str, hint: Any, value: Any, *, from_text: bool) -> Any:
    """Check/convert one value against the field's type hint."""
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is bool:
        if from_text:
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if from_text:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if from_text:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
        raise ConfigError(f"{name}: expected a path, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{name}: expected one of {choices}, got {value!r}")
    if origin is tuple:
        if from_text:
            value = [part.strip() for part in str(value).split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    if type(None) in args:  # Optional[X]
        (inner,) = (a for a in args if a is not type(None))
        if value is None or (from_text and value == ""):
            return None
        return _convert(name, inner, value, from_text=from_text)
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")  # pragma: no cover


def _check_ranges(settings: Settings) -> None:
    s, q, w = settings.server, settings.queue, settings.worker
    a, f, st = settings.archive, settings.forward, settings.stats
    pg = settings.postgres
    checks: list[tuple[bool, str]] = [
        (0 <= s.port <= 65535, f"server.port: {s.port} is not a port number"),
        (s.max_body_bytes >= 1024, "server.max_body_bytes: must be at least 1024"),
        (1 <= s.max_depth <= 512, "server.max_depth: must be between 1 and 512"),
        (s.shutdown_timeout >= 0, "server.shutdown_timeout: must not be negative"),
        (s.read_timeout > 0, "server.read_timeout: must be positive"),
        ((s.tls_cert_file is None) == (s.tls_key_file is None),
         "server.tls_cert_file and server.tls_key_file: set both or neither"),
        *((_host_pattern_ok(h), f"server.allowed_hosts: {h!r} is not a host name or address "
           "(no scheme, no port, no path)") for h in s.allowed_hosts),
        *((_origin_ok(o), f"server.cors_origins: {o!r} is not an origin "
           "(scheme://host or scheme://host:port, http or https)") for o in s.cors_origins),
        (q.max_pending >= 1, "queue.max_pending: must be at least 1"),
        (q.ack_interval_ms >= 0, "queue.ack_interval_ms: must not be negative"),
        (q.max_bytes == 0 or q.max_bytes >= 1 << 20, "queue.max_bytes: 0 or at least 1 MiB"),
        (q.idempotency_ttl_hours >= 24, "queue.idempotency_ttl_hours: must be at least 24"),
        (w.max_attempts >= 1, "worker.max_attempts: must be at least 1"),
        (w.backoff_base > 0, "worker.backoff_base: must be positive"),
        (w.backoff_cap >= w.backoff_base, "worker.backoff_cap: must be >= worker.backoff_base"),
        (w.handler_timeout > 0, "worker.handler_timeout: must be positive"),
        (1 <= w.batch_max <= 100_000, "worker.batch_max: must be between 1 and 100000"),
        (len(w.handlers) >= 1, "worker.handlers: name at least one handler"),
        (a.compress_after_days >= 0, "archive.compress_after_days: must not be negative"),
        (f.timeout > 0, "forward.timeout: must be positive"),
        (f.url is None or f.url.startswith(("http://", "https://")),
         "forward.url: must start with http:// or https://"),
        (f.url is not None or "forward" not in w.handlers,
         "forward.url: required by the forward handler"),
        (0 < st.idle_close_minutes <= 24 * 60,
         "stats.idle_close_minutes: must be above 0 and at most 1440"),
        (0 < st.session_gap_minutes <= 7 * 24 * 60,
         "stats.session_gap_minutes: must be above 0 and at most 10080"),
        (pg.dsn is None or _dsn_ok(pg.dsn),
         "postgres.dsn: a postgresql:// URL expected (postgresql://user@host:5432/dbname)"),
        (not (pg.dsn and pg.dsn_file), "postgres.dsn and postgres.dsn_file: set one, not both"),
        (pg.node is None or (0 < len(pg.node) <= 200 and pg.node.isprintable()),
         "postgres.node: 1 to 200 printable characters expected"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _host_pattern_ok(host: str) -> bool:
    if host == "*":
        return True
    name = host.removeprefix("*.")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:  # only an IPv6 address has colons: "host:port" is not a host
        try:
            ipaddress.IPv6Address(name.split("%")[0])
        except ValueError:
            return False
        return True
    return bool(name) and name.isascii() and all(c.isalnum() or c in ".-_" for c in name)


def _origin_ok(origin: str) -> bool:
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path
            and not parts.query and not parts.fragment and not parts.username
            and origin == f"{parts.scheme}://{parts.netloc}")


def load_settings(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings; `overrides` maps "section.key" to already-typed flag values."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get("COLLECTOR_CONFIG"):
        config_file = Path(env["COLLECTOR_CONFIG"])
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}

    if config_file is not None:
        try:
            with config_file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: invalid TOML: {exc}") from None
        for section, values in data.items():
            if section not in _SECTIONS:
                raise ConfigError(f"config file {config_file}: unknown section [{section}]")
            if not isinstance(values, dict):
                raise ConfigError(f"config file {config_file}: {section} must be a [section]")
            hints = get_type_hints(_SECTIONS[section])
            for key, value in values.items():
                if key not in hints:
                    raise ConfigError(f"config file {config_file}: unknown key {section}.{key}")
                raw[section][key] = _convert(f"{section}.{key}", hints[key], value, from_text=False)

    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        hints = get_type_hints(_SECTIONS[section]) if section in _SECTIONS else {}
        if key not in hints:
            raise ConfigError(f"environment variable {var}: unknown setting")
        raw[section][key] = _convert(var, hints[key], value, from_text=True)

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw[section][key] = value

    settings = Settings(**{name: cls(**raw[name]) for name, cls in _SECTIONS.items()})
    _check_ranges(settings)
    return settings


def describe(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings as plain data for logs, with secrets masked."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(settings):
        section = getattr(settings, f.name)
        values = {k.name: getattr(section, k.name) for k in dataclasses.fields(section)}
        if "token" in values:
            values["token"] = "***" if values["token"] else None
        if f.name == "postgres" and values.get("dsn"):
            values["dsn"] = mask_dsn(values["dsn"])
        out[f.name] = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    return out


def describe_changes(settings: Settings) -> dict[str, dict[str, Any]]:
    """Only the settings that differ from the embedded defaults, as plain data for the
    start-up log line (secrets masked)."""
    defaults = describe(Settings())
    out: dict[str, dict[str, Any]] = {}
    for section, values in describe(settings).items():
        changed = {k: v for k, v in values.items() if defaults[section].get(k) != v}
        if changed:
            out[section] = changed
    return out
