#!/usr/bin/env bash
# Create the secret files deploy/compose/docker-compose.yaml mounts (once; existing files are kept).
#
#   deploy/compose/secrets.sh            -> deploy/compose/secrets/{redis-password,webhook-secret,auth-tokens}
#   ASYNCINFER_SECRETS_DIR=/elsewhere deploy/compose/secrets.sh
#
# The directory is 0700 (only you can look inside); the files are 0644 because Compose bind-mounts them
# as they are and the services run as UID 10001, not as you. auth-tokens holds one admin line; the API
# uses it only when started with AUTH_TOKENS_FILE=/run/secrets/auth-tokens.
set -euo pipefail

DIR="${ASYNCINFER_SECRETS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets}"
mkdir -p "$DIR"
chmod 0700 "$DIR"

random() { python3 -c 'import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))' "$1"; }

write_once() {
    local path="$DIR/$1" value="$2"
    [ -s "$path" ] && return 0
    umask 022
    printf '%s\n' "$value" > "$path.tmp" && chmod 0644 "$path.tmp" && mv "$path.tmp" "$path"
    echo "secrets.sh: wrote $path" >&2
}

write_once redis-password "$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
write_once webhook-secret "whsec_$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')"
write_once auth-tokens "admin admin $(random 30)"
