#!/usr/bin/env bash
# Install collector as a systemd service on this machine, from this checkout.
#
#   sudo scripts/install.sh [--socket] [--self-signed] [--no-start] [--python /usr/bin/python3]
#
# Puts a virtualenv with this checkout in /opt/collector/venv, a commented config in
# /etc/collector/collector.toml and a bearer token in /etc/collector/token (both only if
# missing: yours are never overwritten), the units in /etc/systemd/system, then enables
# and (re)starts the service. Run it again to upgrade. --socket also enables
# collector.socket (socket activation). --self-signed serves HTTPS with a self-signed
# certificate made here if /etc/collector/tls/cert.pem is missing (825 days; its key
# reaches the service as a credential, like the token). scripts/uninstall.sh undoes it.
set -euo pipefail

PREFIX=/opt/collector           # the unit's ExecStart= points into it
CONF_DIR=/etc/collector
UNIT_DIR=/etc/systemd/system
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=python3
SOCKET=no
START=yes

TLS_DIR=$CONF_DIR/tls
#: The key as the service reads it: systemd copies it there for the service alone
#: (LoadCredential= in a drop-in), so the file itself stays readable by root only.
TLS_KEY_CREDENTIAL=/run/credentials/collector.service/tls-key
TLS_DROP_IN=$UNIT_DIR/collector.service.d/tls.conf
SELF_SIGNED=no

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --socket) SOCKET=yes ;;
        --self-signed) SELF_SIGNED=yes ;;
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
if [ "$SELF_SIGNED" = yes ] && ! command -v openssl >/dev/null 2>&1; then
    echo "install.sh: --self-signed needs openssl (Debian: apt-get install openssl)" >&2
    exit 1
fi

# The names and addresses the certificate is valid for: the host name, its .local name
# (mDNS), its fully qualified name when it has one, localhost, 127.0.0.1 and every
# non-loopback IPv4 address of this machine.
host_name() { uname -n | cut -d. -f1; }
host_fqdn() {
    local fqdn
    fqdn=$(hostname -f 2>/dev/null || true)
    case "$fqdn" in
        *.*) [ "$fqdn" != "$(host_name).local" ] && printf '%s\n' "$fqdn" ;;
    esac
    return 0
}
host_ipv4s() {
    if command -v ip >/dev/null 2>&1; then
        ip -4 -o addr show scope global | awk '{ sub(/\/.*/, "", $4); print $4 }'
    else
        hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' || true
    fi
}
subject_alt_names() {
    local name fqdn san ip
    name=$(host_name)
    san="DNS:$name,DNS:$name.local"
    fqdn=$(host_fqdn)
    if [ -n "$fqdn" ] && [ "$fqdn" != "$name" ]; then
        san="$san,DNS:$fqdn"
    fi
    san="$san,DNS:localhost,IP:127.0.0.1"
    for ip in $(host_ipv4s); do
        san="$san,IP:$ip"
    done
    printf '%s\n' "$san"
}

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
TLS_LINES="tls_cert_file = \"$TLS_DIR/cert.pem\"
tls_key_file = \"$TLS_KEY_CREDENTIAL\""
if [ ! -e "$CONF_DIR/collector.toml" ]; then
    if [ "$SELF_SIGNED" = yes ]; then
        # The two settings go right under [server] of the commented template.
        awk -v lines="# HTTPS (install.sh --self-signed). systemd hands the service the key,
# $TLS_DIR/key.pem, as a credential: see $TLS_DROP_IN.
$TLS_LINES" '{ print } /^\[server\]$/ { print lines }' \
            "$SRC/systemd/collector.toml" >"$CONF_DIR/collector.toml.new"
        chmod 0644 "$CONF_DIR/collector.toml.new"
        mv "$CONF_DIR/collector.toml.new" "$CONF_DIR/collector.toml"
    else
        install -m 0644 "$SRC/systemd/collector.toml" "$CONF_DIR/collector.toml"
    fi
else
    echo "keeping $CONF_DIR/collector.toml"
    if [ "$SELF_SIGNED" = yes ] && ! grep -q '^tls_cert_file' "$CONF_DIR/collector.toml"; then
        echo "to serve HTTPS, add these two lines under [server] in $CONF_DIR/collector.toml:"
        printf '%s\n' "$TLS_LINES" | sed 's/^/    /'
    fi
fi
if [ ! -e "$CONF_DIR/token" ]; then
    (umask 077 && "$py" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$CONF_DIR/token")
    echo "new bearer token in $CONF_DIR/token (root only; the service gets it as a credential)"
else
    echo "keeping $CONF_DIR/token"
fi
chmod 0600 "$CONF_DIR/token"

if [ "$SELF_SIGNED" = yes ]; then
    say "TLS certificate in $TLS_DIR"
    install -d -m 0755 "$TLS_DIR"
    if [ ! -e "$TLS_DIR/cert.pem" ]; then
        san=$(subject_alt_names)
        # EC P-256, self-signed, not a CA (browsers refuse a CA certificate as a server's),
        # 825 days (the longest that Apple's clients accept).
        (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -nodes -days 825 -subj "/CN=$(host_name)" \
            -addext "subjectAltName=$san" \
            -addext "basicConstraints=critical,CA:FALSE" \
            -addext "keyUsage=critical,digitalSignature" \
            -addext "extendedKeyUsage=serverAuth" \
            -keyout "$TLS_DIR/key.pem.new" -out "$TLS_DIR/cert.pem.new" 2>/dev/null)
        # Like the token: the key is root's alone; the service gets a copy as a credential.
        chown root:root "$TLS_DIR/key.pem.new" "$TLS_DIR/cert.pem.new"
        chmod 0600 "$TLS_DIR/key.pem.new"
        chmod 0644 "$TLS_DIR/cert.pem.new"  # public: the bridge needs it (--ca-file)
        mv "$TLS_DIR/key.pem.new" "$TLS_DIR/key.pem"
        mv "$TLS_DIR/cert.pem.new" "$TLS_DIR/cert.pem"
        echo "new self-signed certificate in $TLS_DIR/cert.pem, valid 825 days for $san"
    else
        echo "keeping $TLS_DIR/cert.pem"
    fi
    if [ ! -e "$TLS_DIR/key.pem" ]; then
        echo "install.sh: $TLS_DIR/cert.pem has no key.pem beside it;" \
             "put its key there, or move both away to make a new pair" >&2
        exit 1
    fi
    chmod 0600 "$TLS_DIR/key.pem"
fi

# How the admin commands reach the service, and the bridge command for the gaming PC.
config_port() {
    local port
    port=$(sed -n 's/^port *= *\([0-9][0-9]*\).*/\1/p' "$CONF_DIR/collector.toml" | head -n 1)
    printf '%s\n' "${port:-8765}"
}
status_flags() {
    if [ "$SELF_SIGNED" = yes ]; then
        printf '%s\n' "--url https://127.0.0.1:$(config_port) --ca-file $TLS_DIR/cert.pem --token-file $CONF_DIR/token"
    else
        printf '%s\n' "--token-file $CONF_DIR/token"
    fi
}
bridge_hint() {
    [ "$SELF_SIGNED" = yes ] || return 0
    local names
    names=$(openssl x509 -in "$TLS_DIR/cert.pem" -noout -ext subjectAltName | tail -n +2 |
            sed 's/DNS://g; s/IP Address://g; s/^ *//')
    cat <<EOF

On the gaming PC (the daemon must listen where the PC reaches it: [server] host = "0.0.0.0"
in $CONF_DIR/collector.toml; see docs/deployment.md, "TLS on the LAN"):
1. Copy the certificate (public: no secret in it) to the PC, e.g. in a Windows terminal
     scp $(host_name):$TLS_DIR/cert.pem %USERPROFILE%\\collector-cert.pem
   and put the token (the contents of $CONF_DIR/token, root only) in
   %USERPROFILE%\\collector-token.txt.
2. Start the bridge there:
     collector bridge --to https://$(host_name):$(config_port) --ca-file %USERPROFILE%\\collector-cert.pem --token-file %USERPROFILE%\\collector-token.txt
   In --to, use a name or address the certificate lists: $names.
EOF
}

say "units in $UNIT_DIR"
install -m 0644 "$SRC/systemd/collector.service" "$UNIT_DIR/collector.service"
install -m 0644 "$SRC/systemd/collector.socket" "$UNIT_DIR/collector.socket"
if [ "$SELF_SIGNED" = yes ]; then
    # DynamicUser= has no fixed user or group to own the key: systemd copies it, for the
    # service alone, to $TLS_KEY_CREDENTIAL (as it does the token).
    install -d -m 0755 "$(dirname "$TLS_DROP_IN")"
    printf '%s\n' "# Written by scripts/install.sh --self-signed: the TLS key, as a credential." \
        "[Service]" "LoadCredential=tls-key:$TLS_DIR/key.pem" >"$TLS_DROP_IN"
    chmod 0644 "$TLS_DROP_IN"
fi

if [ ! -d /run/systemd/system ]; then
    echo "systemd is not running here: installed, but not enabled or started."
    echo "On the target: systemctl daemon-reload && systemctl enable --now collector"
    bridge_hint
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
echo "done. Try: $PREFIX/venv/bin/collector status $(status_flags)"
bridge_hint
