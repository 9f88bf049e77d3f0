#!/bin/sh
# The in-chart Redis Cluster (redis.architecture=cluster): `redis` starts one node, `bootstrap` (the
# bootstrap Job) joins the nodes into a Cluster once. The password is read from PASSWORD_FILE: it
# reaches redis-server as config lines on stdin and redis-cli through REDISCLI_AUTH set by this script,
# never in argv or the pod spec.
#
#   redis:     env POD_IP, SELF_HOST (this pod's DNS name), PASSWORD_FILE, DATA_DIR; redis-server's args follow
#   bootstrap: env NODES ("host:port ..."), REPLICAS, TIMEOUT_SECONDS, PASSWORD_FILE
#              (tests/chart/test_redis_cluster_chart.py runs it against real redis-servers)
set -eu

# The password file's bytes without surrounding ASCII whitespace (what the services' Settings.secret()
# reads), in hex.
password_hex() {
    hex=$(od -An -v -tx1 "$PASSWORD_FILE" | tr -d ' \n')
    while :; do case "$hex" in 09*|0a*|0b*|0c*|0d*|1c*|1d*|1e*|1f*|20*) hex=${hex#??} ;; *) break ;; esac; done
    while :; do case "$hex" in *09|*0a|*0b|*0c|*0d|*1c|*1d|*1e|*1f|*20) hex=${hex%??} ;; *) break ;; esac; done
    printf '%s' "$hex"
}

# The password as a Redis config string of \xHH escapes: any character reaches Redis unchanged.
quoted_password() {
    printf '"%s"' "$(password_hex | sed 's/../\\x&/g')"
}

# The password's own bytes (for REDISCLI_AUTH).
raw_password() {
    for byte in $(password_hex | sed 's/../& /g'); do
        # shellcheck disable=SC2059 # the format is the byte, as an octal escape
        printf "\\$(printf '%03o' "0x$byte")"
    done
}

resolve() {
    getent hosts "$1" | awk '{ print $1; exit }'
}

refresh_nodes_conf() {
    # A pod's IP changes with each restart, and a node finds the others at the addresses its nodes.conf
    # recorded: after every pod restarted at once no node would reach any other. Each node announces its
    # pod's DNS name (cluster-announce-hostname); point every known node at what that name resolves to now.
    conf="$1"
    [ -f "$conf" ] || return 0
    while read -r id address _; do
        case "$address" in *,*) ;; *) continue ;; esac
        rest=${address#*,}
        host=${rest%%,*}
        [ -n "$host" ] || continue
        ip=$(resolve "$host") || true
        old=${address%%:*}
        if [ -n "$ip" ] && [ "$ip" != "$old" ]; then
            sed -i "s/^$id $old:/$id $ip:/" "$conf"
        fi
    done <"$conf"
}

case "${1:-}" in
redis)
    shift
    refresh_nodes_conf "$DATA_DIR/nodes.conf"
    password=$(quoted_password)
    # Config lines on stdin (`redis-server -`): the password never reaches argv.
    exec redis-server - "$@" <<EOF
requirepass $password
masterauth $password
cluster-announce-ip $POD_IP
cluster-announce-hostname $SELF_HOST
EOF
    ;;
bootstrap)
    # redis-cli takes the password from REDISCLI_AUTH (`--cluster create` has no other way but argv): the
    # bytes of the file without surrounding whitespace, set in this Job's processes only.
    REDISCLI_AUTH=$(raw_password)
    export REDISCLI_AUTH
    deadline=$(($(date +%s) + TIMEOUT_SECONDS))
    addresses=""
    for node in $NODES; do
        host=${node%:*}
        port=${node##*:}
        # Every node must answer first: `--cluster create` needs all of them at once.
        while :; do
            ip=$(resolve "$host") || ip=""
            reply=""
            [ -z "$ip" ] || reply=$(redis-cli -h "$ip" -p "$port" ping 2>&1) || true
            case "$reply" in
            PONG) break ;;
            *WRONGPASS* | *NOAUTH* | *"invalid password"*)
                # Waiting would not help: the Secret and the nodes disagree.
                echo "bootstrap: $node refuses the password in PASSWORD_FILE: $reply" >&2
                exit 1
                ;;
            esac
            if [ "$(date +%s)" -ge "$deadline" ]; then
                echo "bootstrap: $node did not answer within ${TIMEOUT_SECONDS}s" >&2
                exit 1
            fi
            sleep 2
        done
        addresses="$addresses $ip:$port"
    done
    # Once only: a node holding slots means the Cluster was created (a re-run, an upgrade, a retry).
    for address in $addresses; do
        if redis-cli -h "${address%:*}" -p "${address##*:}" cluster info | grep -q '^cluster_slots_assigned:[1-9]'; then
            echo "bootstrap: the Cluster exists already ($address holds slots); nothing to do"
            exit 0
        fi
    done
    # shellcheck disable=SC2086 # one argument per address
    redis-cli --cluster create $addresses --cluster-replicas "$REPLICAS" --cluster-yes
    first=${addresses# }
    first=${first%% *}
    until redis-cli -h "${first%:*}" -p "${first##*:}" cluster info | grep -q '^cluster_state:ok'; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "bootstrap: the Cluster was created but is not ok within ${TIMEOUT_SECONDS}s" >&2
            exit 1
        fi
        sleep 1
    done
    echo "bootstrap: the Cluster is ok"
    ;;
*)
    echo "usage: $0 redis|bootstrap" >&2
    exit 2
    ;;
esac
