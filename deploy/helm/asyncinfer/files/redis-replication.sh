#!/bin/sh
# Start one pod of the chart's Redis replication set (redis.architecture=replication): a redis-server
# and a Sentinel beside it. Both ask the Sentinels which node is the primary, so that a pod that comes
# back (a restarted old primary included) replicates from the current one; only when no Sentinel knows
# one does the first pod (PRIMARY_HOST) start as primary.
#
#   redis-replication.sh redis [redis-server arguments...]    exec redis-server, as primary or replica
#   redis-replication.sh sentinel                             exec redis-server --sentinel
#   redis-replication.sh prestop                              before the pod stops: hand the primary's
#                                                             role over (SENTINEL FAILOVER), if it has it
#
# Environment (the StatefulSet sets it; tests/chart/test_redis_replication_script.py runs it on loopback):
#   SELF_HOST, REDIS_PORT        the address this pod's redis-server announces (its stable DNS name)
#   SENTINEL_PORT                the port this pod's Sentinel listens on and announces
#   PRIMARY_HOST, PRIMARY_PORT   the first pod's address: the primary of a brand-new set (port: REDIS_PORT)
#   SENTINELS                    every Sentinel of the set, "host:port" separated by spaces
#   MASTER_SET                   the Sentinel master set's name
#   PASSWORD_FILE                Redis's password (also the Sentinels' own: one Secret)
#   SENTINEL_CONF                the Sentinel's config file; on the data volume, so after an outage of
#                                every pod the last primary the Sentinels saw is remembered
#   QUORUM, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS  Sentinel's failover settings (sentinel mode)
#   DISCOVERY_WAIT_S             how long to wait for some Sentinel to answer before deciding alone
#   HANDOVER_WAIT_S              prestop: how long to wait for the Sentinels to name another primary
# No password is ever put in argv or the environment of a child: it goes in on stdin or in a 0600 file.
set -eu

log() { echo "redis-replication.sh: $*" >&2; }

# The password file's bytes without surrounding ASCII whitespace, as a Redis config/redis-cli string of
# \xHH escapes (what the services' Settings.secret() reads, whatever characters it holds).
quoted_password() {
    hex=$(od -An -v -tx1 "$PASSWORD_FILE" | tr -d ' \n')
    while :; do case "$hex" in 09*|0a*|0b*|0c*|0d*|1c*|1d*|1e*|1f*|20*) hex=${hex#??} ;; *) break ;; esac; done
    while :; do case "$hex" in *09|*0a|*0b|*0c|*0d|*1c|*1d|*1e|*1f|*20) hex=${hex%??} ;; *) break ;; esac; done
    printf '"%s"' "$(printf '%s' "$hex" | sed 's/../\\x&/g')"
}

# Ask one Sentinel for the master set's primary. Prints "host port" when it knows one, nothing when it
# answers without one; fails when it cannot be asked (not up yet, unresolvable, wrong password).
ask_sentinel() {
    host=${1%:*}
    port=${1##*:}
    reply=$(printf 'AUTH %s\nSENTINEL get-master-addr-by-name %s\n' "$password" "$MASTER_SET" |
        timeout 3 redis-cli -h "$host" -p "$port" 2>/dev/null) || return 1
    [ "$(printf '%s\n' "$reply" | sed -n 1p)" = OK ] || return 1
    printf '%s\n' "$reply" | sed -n '2p;3p' | tr '\n' ' ' | sed 's/ *$//'
}

# The primary most Sentinels name (a Sentinel that restarted alone may still name an old one), or the
# last one this pod's Sentinel recorded, or PRIMARY_HOST when nobody has ever seen one. Waits up to
# DISCOVERY_WAIT_S for some Sentinel to answer: a Sentinel that is merely starting must not make a
# restarted pod believe the set is brand new.
find_primary() {
    deadline=$(( $(date +%s) + ${DISCOVERY_WAIT_S:-10} ))
    while :; do
        answered=0
        named=""
        for sentinel in $SENTINELS; do
            if answer=$(ask_sentinel "$sentinel"); then
                answered=1
                [ -n "$answer" ] && named="$named$answer
"
            fi
        done
        if [ -n "$named" ]; then
            printf '%s' "$named" | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2, $3}'
            return
        fi
        if [ "$answered" = 1 ] || [ "$(date +%s)" -ge "$deadline" ]; then
            break
        fi
        sleep 1
    done
    if [ -f "$SENTINEL_CONF" ] && recorded=$(awk -v set="$MASTER_SET" '$1 == "sentinel" && $2 == "monitor" && $3 == set {print $4, $5}' "$SENTINEL_CONF") && [ -n "$recorded" ]; then
        log "no Sentinel names a primary; using the last one recorded in $SENTINEL_CONF: $recorded"
        echo "$recorded"
        return
    fi
    log "no Sentinel names a primary and none was ever recorded: a new set, $PRIMARY_HOST is the primary"
    echo "$PRIMARY_HOST ${PRIMARY_PORT:-$REDIS_PORT}"
}

start_redis() {
    primary=$(find_primary)
    if [ "$primary" = "$SELF_HOST $REDIS_PORT" ]; then
        log "starting as the primary"
        replicaof=""
    else
        log "starting as a replica of $primary"
        replicaof="replicaof $primary"
    fi
    # Config lines on stdin (`redis-server -`): the password never reaches argv.
    exec redis-server - "$@" <<EOF
requirepass $password
masterauth $password
replica-announce-ip $SELF_HOST
replica-announce-port $REDIS_PORT
$replicaof
EOF
}

start_sentinel() {
    primary=$(find_primary)
    log "monitoring $primary as $MASTER_SET"
    # Keep this Sentinel's identity (so its peers do not count it twice) and its epochs (so it never
    # votes twice in one election) across restarts; everything else it relearns from its peers.
    identity=""
    epochs=""
    if [ -f "$SENTINEL_CONF" ]; then
        identity=$(awk '$1 == "sentinel" && ($2 == "myid" || $2 == "current-epoch") {print}' "$SENTINEL_CONF")
        epochs=$(awk -v set="$MASTER_SET" '$1 == "sentinel" && ($2 == "config-epoch" || $2 == "leader-epoch") && $3 == set {print}' "$SENTINEL_CONF")
    fi
    umask 077
    # Sentinel rewrites this file as the set changes (the primary after a failover): find_primary reads it back.
    cat >"$SENTINEL_CONF.new" <<EOF
port $SENTINEL_PORT
dir $(dirname "$SENTINEL_CONF")
$identity
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF_HOST
sentinel announce-port $SENTINEL_PORT
requirepass $password
sentinel sentinel-pass $password
sentinel monitor $MASTER_SET $primary $QUORUM
sentinel auth-pass $MASTER_SET $password
sentinel down-after-milliseconds $MASTER_SET $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_SET $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_SET 1
$epochs
EOF
    mv "$SENTINEL_CONF.new" "$SENTINEL_CONF"
    exec redis-server "$SENTINEL_CONF" --sentinel
}

# A primary about to stop (a rolling update, a node drain) asks its Sentinel for a failover and waits
# until the Sentinels name another primary: clients switch in about a second instead of waiting
# DOWN_AFTER_MS for the Sentinels to notice it gone.
hand_over() {
    role=$(printf 'AUTH %s\nROLE\n' "$password" | timeout 3 redis-cli -p "$REDIS_PORT" 2>/dev/null | sed -n 2p) || return 0
    [ "$role" = master ] || return 0
    deadline=$(( $(date +%s) + ${HANDOVER_WAIT_S:-20} ))
    asked=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        named=$(ask_sentinel "127.0.0.1:$SENTINEL_PORT") || named=""
        if [ -n "$named" ] && [ "$named" != "$SELF_HOST $REDIS_PORT" ]; then
            log "the Sentinels name $named the primary now"
            return 0
        fi
        # Asked again until the Sentinel takes it: it may not know a replica in sync yet (NOGOODSLAVE).
        if [ "$asked" != OK ]; then
            asked=$(printf 'AUTH %s\nSENTINEL FAILOVER %s\n' "$password" "$MASTER_SET" | timeout 3 redis-cli -p "$SENTINEL_PORT" 2>/dev/null | sed -n 2p) || asked=""
            log "this primary is stopping; asked its Sentinel for a failover: $asked"
        fi
        sleep 1
    done
    log "no failover within ${HANDOVER_WAIT_S:-20} s; stopping anyway (the Sentinels fail over once this primary is gone)"
}

password=$(quoted_password)
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
    redis) start_redis "$@" ;;
    sentinel) start_sentinel ;;
    prestop) hand_over ;;
    *) log "usage: $0 redis [redis-server arguments...] | sentinel | prestop"; exit 2 ;;
esac
