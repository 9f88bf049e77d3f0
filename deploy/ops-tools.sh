#!/usr/bin/env bash
# Installs the tools the operations tests need: Prometheus (server + promtool) and Chromium (driven by
# Playwright with executable_path=/usr/bin/chromium; `playwright install` is never used: it downloads
# browsers). Idempotent: does nothing when both are already there; `apt-get update` runs at most once.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# Other installers may hold the dpkg lock: wait for it rather than fail.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get "${apt_opts[@]}" update -qq
$sudo apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}"
command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null
