#!/usr/bin/env bash
# Install collector as a systemd service on this machine, from this checkout.
#
#   sudo scripts/install.sh [--socket] [--no-start] [--python /usr/bin/python3]
#
# Puts a virtualenv with this checkout in /opt/collector/venv, a commented config in
# /etc/collector/collector.toml and a bearer token in /etc/collector/token (both only if
# missing: yours are never overwritten), the units in /etc/systemd/system, then enables
# and (re)starts the service. Run it again to upgrade. --socket also enables
# collector.socket (socket activation). scripts/uninstall.sh undoes it.
set -euo pipefail

PREFIX=/opt/collector           # the unit's ExecStart= points into it
CONF_DIR=/etc/collector
UNIT_DIR=/etc/systemd/system
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=python3
SOCKET=no
START=yes

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --socket) SOCKET=yes ;;
        --no-start) START=no ;;
        --python) PYTHON=${2:?--python needs a path}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

say() { printf '== %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it writes to /opt, /etc and asks systemd)" >&2
    exit 1
fi

py=$(command -v "$PYTHON" || true)
if [ -z "$py" ]; then
    echo "install.sh: $PYTHON not found" >&2
    exit 1
fi
py=$(readlink -f "$py")
case "$py" in
    /root/*|/home/*|/run/user/*)
        # The unit has ProtectHome=yes: the service could not even start its interpreter.
        echo "install.sh: $py lives under a home directory, which the service cannot see;" \
             "use a system Python, e.g. --python /usr/bin/python3" >&2
        exit 1 ;;
esac
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: $py is older than Python 3.11" >&2
    exit 1
fi

say "virtualenv in $PREFIX/venv"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    mkdir -p "$PREFIX"
    if ! "$py" -m venv "$PREFIX/venv"; then
        echo "install.sh: cannot create a virtualenv (Debian: apt-get install python3-venv)" >&2
        rm -rf "$PREFIX/venv"
        exit 1
    fi
fi
"$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC"
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
install -d -m 0755 "$PREFIX/docs"
install -m 0644 "$SRC"/docs/*.md "$PREFIX/docs/"

say "config in $CONF_DIR"
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF_DIR/collector.toml" ]; then
    install -m 0644 "$SRC/systemd/collector.toml" "$CONF_DIR/collector.toml"
else
    echo "keeping $CONF_DIR/collector.toml"
fi
if [ ! -e "$CONF_DIR/token" ]; then
    (umask 077 && "$py" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$CONF_DIR/token")
    echo "new bearer token in $CONF_DIR/token (root only; the service gets it as a credential)"
else
    echo "keeping $CONF_DIR/token"
fi
chmod 0600 "$CONF_DIR/token"

say "units in $UNIT_DIR"
install -m 0644 "$SRC/systemd/collector.service" "$UNIT_DIR/collector.service"
install -m 0644 "$SRC/systemd/collector.socket" "$UNIT_DIR/collector.socket"

if [ ! -d /run/systemd/system ]; then
    echo "systemd is not running here: installed, but not enabled or started."
    echo "On the target: systemctl daemon-reload && systemctl enable --now collector"
    exit 0
fi
systemctl daemon-reload
if [ "$SOCKET" = yes ]; then
    systemctl enable collector.socket
fi
systemctl enable collector.service
if [ "$START" = yes ]; then
    say "starting (returns once the daemon is ready: Type=notify)"
    if [ "$SOCKET" = yes ]; then
        systemctl stop collector.service  # the socket must be bound by systemd first
        systemctl restart collector.socket
        systemctl start collector.service
    else
        systemctl restart collector.service
    fi
    systemctl --no-pager --lines=0 status collector.service || true
fi
echo "done. Try: $PREFIX/venv/bin/collector status --token-file $CONF_DIR/token"
