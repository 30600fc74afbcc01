#!/usr/bin/env bash
# Remove what scripts/install.sh installed.
#
#   sudo scripts/uninstall.sh [--purge]
#
# Stops and disables the service and the socket, removes the units and /opt/collector.
# The queue and statistics (/var/lib/collector), the config and the token
# (/etc/collector) and drop-ins (systemctl edit) stay, unless --purge is given: then
# they are deleted too.
set -euo pipefail

PREFIX=/opt/collector
CONF_DIR=/etc/collector
UNIT_DIR=/etc/systemd/system
PURGE=no

while [ $# -gt 0 ]; do
    case "$1" in
        --purge) PURGE=yes ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root" >&2
    exit 1
fi

if [ -d /run/systemd/system ]; then
    # A drain finishes the current job first (TimeoutStopSec= covers it).
    systemctl disable --now collector.socket collector.service 2>/dev/null || true
fi
rm -f "$UNIT_DIR/collector.service" "$UNIT_DIR/collector.socket"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed collector.service 2>/dev/null || true
fi
rm -rf "$PREFIX"
echo "removed the units and $PREFIX"

if [ "$PURGE" = yes ]; then
    # DynamicUser= keeps the data in /var/lib/private/collector behind a symlink.
    rm -rf /var/lib/collector /var/lib/private/collector "$CONF_DIR" \
        "$UNIT_DIR/collector.service.d" "$UNIT_DIR/collector.socket.d"
    echo "purged /var/lib/collector, $CONF_DIR and the units' drop-ins"
else
    echo "kept the data in /var/lib/collector and the config and token in $CONF_DIR" \
         "(--purge deletes them)"
fi
