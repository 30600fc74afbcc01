#!/usr/bin/env bash
# Check the unit files: `systemd-analyze verify` (any warning fails) and the sandbox
# rating of `systemd-analyze security --offline` (exposure 1.5 or lower).
#
# verify refuses a unit whose ExecStart= binary does not exist. Rather than put a stub
# at /opt/collector/venv/bin/collector on this machine (where a real install may live),
# the units are verified inside a throw-away root (--root=) holding the units, a copy of
# the system's own unit directory (for sysinit.target & co) and a stub executable. So
# this checks the unit syntax, dependencies and the ExecStart path's shape, not that the
# real program runs: tests/test_systemd.py and scripts/install.sh cover that.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-units: systemd-analyze not found (Debian package systemd)" >&2
    exit 3
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/opt/collector/venv/bin"
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$dir" ]; then
        cp -a "$dir" "$root/usr/lib/systemd/"
        break
    fi
done
cp "$here/collector.service" "$here/collector.socket" "$root/etc/systemd/system/"
printf '#!/bin/sh\nexit 0\n' >"$root/opt/collector/venv/bin/collector"
chmod 0755 "$root/opt/collector/venv/bin/collector"

echo "== systemd-analyze verify collector.service collector.socket"
out=$(systemd-analyze verify --root="$root" collector.service collector.socket 2>&1) || {
    echo "$out" >&2
    exit 1
}
if [ -n "$out" ]; then  # unknown keys and bad values are warnings with exit code 0
    echo "$out" >&2
    echo "check-units: verify printed warnings" >&2
    exit 1
fi
echo "ok"

echo "== systemd-analyze security --offline=true --threshold=15 collector.service"
systemd-analyze security --offline=true --threshold=15 --no-pager \
    "$here/collector.service" | tail -n 1
