#!/usr/bin/env bash
# Find or start a Docker engine for the container test tier.
#
#   engine.sh start   print the DOCKER_HOST to use (stdout, one line); logs go to stderr
#   engine.sh stop    stop the dockerd that `start` launched (by the PID in its pid file)
#
# Order: a DOCKER_HOST that answers, then /var/run/docker.sock (a developer laptop), then
# (root only) Debian's docker.io started by hand with everything under a scratch directory,
# because there is no systemd here. Without root and without an engine there is nothing we
# can run: one line on stderr and exit 77 (the automake "skipped" code the tier treats as skip).
set -euo pipefail

SKIP_EXIT=77
# Outside the work tree (CI clones it afresh) and kept across runs, so the layer cache survives.
SCRATCH="${ASYNCINFER_DOCKER_DIR:-/var/tmp/asyncinfer-docker}"
SOCK="$SCRATCH/docker.sock"
PIDFILE="$SCRATCH/dockerd.pid"
LOG="$SCRATCH/dockerd.log"
START_TIMEOUT_S=60

log() { echo "engine.sh: $*" >&2; }

# Debian's CLI (20.10, BuildKit built in) when present; the engine API is version-negotiated.
docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker || true; fi
}

answers() {  # $1 = DOCKER_HOST value
    local cli; cli="$(docker_cli)"
    [ -n "$cli" ] && DOCKER_HOST="$1" timeout 10 "$cli" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

our_pid() {  # PID of the dockerd we started, if it still runs
    [ -f "$PIDFILE" ] || return 1
    local pid; pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_engine() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    [ -x /usr/bin/docker ] || missing+=(docker.io)
    # Compose v1 from Debian: the tier validates and runs deploy/compose/docker-compose.yaml with it.
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

start() {
    if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
        echo "$DOCKER_HOST"; return 0
    fi
    if [ -S /var/run/docker.sock ] && answers unix:///var/run/docker.sock; then
        echo unix:///var/run/docker.sock; return 0
    fi
    if our_pid >/dev/null && answers "unix://$SOCK"; then
        echo "unix://$SOCK"; return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        # One line, on stderr: the caller (make, pytest) turns exit 77 into a reported skip.
        echo "SKIP container tier: no Docker engine answers (DOCKER_HOST, /var/run/docker.sock) and not root, so none can be started" >&2
        exit "$SKIP_EXIT"
    fi
    install_engine
    mkdir -p "$SCRATCH"
    rm -f "$SOCK" "$PIDFILE"
    log "starting dockerd (data, socket, pid and log under $SCRATCH)"
    # setsid: the engine must not die with the make/pytest process group that started it;
    # it is stopped explicitly by `engine.sh stop`.
    setsid "$(command -v dockerd || echo /usr/sbin/dockerd)" \
        --host "unix://$SOCK" \
        --data-root "$SCRATCH/data" \
        --exec-root "$SCRATCH/exec" \
        --pidfile "$PIDFILE" \
        >"$LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until answers "unix://$SOCK"; do
        if [ $SECONDS -ge $deadline ]; then
            log "dockerd did not answer within ${START_TIMEOUT_S}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    log "dockerd $(cat "$PIDFILE") ready"
    echo "unix://$SOCK"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        log "no dockerd started by this script is running"; return 0
    fi
    # Our own scratch engine only: drop superseded images and cap the build cache so the
    # data-root does not grow run after run (a developer's engine is never pruned).
    local cli; cli="$(docker_cli)"
    DOCKER_HOST="unix://$SOCK" timeout 120 "$cli" image prune --force >/dev/null 2>&1 || true
    DOCKER_HOST="unix://$SOCK" timeout 120 "$cli" builder prune --force --keep-storage "${ASYNCINFER_BUILD_CACHE:-4GB}" >/dev/null 2>&1 || true
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    # dockerd stops its containers (10 s grace each) and its managed containerd first.
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }; sleep 0.5; done
    log "dockerd $pid still running after 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
