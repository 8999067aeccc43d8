#!/usr/bin/env bash
# nbdkit-qed tests: the shipped systemd units (systemd/).  nbdkit is
# started as nbdkit-qed.service starts it: its ExecStart line, with the
# unit's Environment= defaults and the shipped /etc/default file
# (nbdkit-qed.default) expanded as systemd does, under
# systemd-socket-activate, which passes the listening socket the way
# systemd does (LISTEN_PID, LISTEN_FDS).  Only the plugin's path is
# changed (the build tree's, for "qed") and the image paths (a
# temporary directory, for /var/lib/nbdkit-qed).  Clients read and
# write through it; qemu-img checks the images afterwards.  The
# system calls that nbdkit makes must all be allowed by the unit's
# SystemCallFilter, and systemd-analyze verify must accept the units.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires systemd-socket-activate --version
requires nbdkit --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version

units=$abs_top_srcdir/systemd
service=$units/nbdkit-qed.service
socket=$units/nbdkit-qed.socket
defaults=$units/nbdkit-qed.default
statedir=/var/lib/nbdkit-qed

# unit_values FILE KEY: the values of KEY= in section lines of FILE.
unit_values ()
{
    sed -n "s/^$2=//p" "$1"
}

#----------------------------------------------------------------------
# The socket: the loopback address only, by default.

[ "$(unit_values "$socket" ListenStream)" = 127.0.0.1:10809 ]
[ "$(grep -c '^Listen' "$socket")" = 1 ]

#----------------------------------------------------------------------
# The service's environment: Environment= defaults, then
# EnvironmentFile= (the shipped default file) over them.

[ "$(unit_values "$service" EnvironmentFile)" = -/etc/default/nbdkit-qed ]
declare -A env=()
for assignment in $(unit_values "$service" Environment); do
    env[${assignment%%=*}]=${assignment#*=}
done
# The default file: NAME=VALUE lines and comments, nothing that
# systemd and this reading would take differently (no quotes, no
# backslashes, no spaces around "=").
while IFS= read -r line; do
    case $line in
        ''|'#'*) continue ;;
    esac
    if [[ ! $line =~ ^[A-Z_][A-Z0-9_]*=[^\"\'\\]*$ ]]; then
        echo "$0: $defaults: a line this test cannot read as systemd does: $line"
        exit 1
    fi
    env[${line%%=*}]=${line#*=}
done < "$defaults"
# Both set the same defaults (so a missing /etc/default file changes
# nothing).
[ "${env[NBDKIT_QED_ARGS]}" = "dir=$statedir" ]
[ "${env[NBDKIT_OPTIONS]}" = "" ]
grep -x "Environment=NBDKIT_OPTIONS= NBDKIT_QED_ARGS=dir=$statedir" "$service"
[ "$(unit_values "$service" StateDirectory)" = nbdkit-qed ]

#----------------------------------------------------------------------
# ExecStart, word by word as systemd splits it: "$NAME" alone is the
# variable's value split at spaces (no words when empty).  The
# command is the system's nbdkit and the plugin is "qed".

[ "$(grep -c '^ExecStart=' "$service")" = 1 ]
read -r -a exec_words <<< "$(unit_values "$service" ExecStart)"
[ "${exec_words[0]}" = /usr/bin/nbdkit ]
[ "$(printf '%s\n' "${exec_words[@]}" | grep -cx qed)" = 1 ]

# service_argv NAME=VALUE...: the command line of the service, in the
# array argv, with these variables set over the unit's and the default
# file's, and the build tree's plugin (and nbdkit's wrapper, as
# start_nbdkit has it).
service_argv ()
{
    local -A vars=()
    local k w v
    for k in "${!env[@]}"; do vars[$k]=${env[$k]}; done
    for w in "$@"; do vars[${w%%=*}]=${w#*=}; done
    argv=("${_nbdkit_wrapper[@]}" "$(command -v nbdkit)")
    for w in "${exec_words[@]:1}"; do
        if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
            v=${vars[${BASH_REMATCH[1]}]-}
            # shellcheck disable=SC2206 # split at spaces, as systemd
            argv+=($v)
        elif [[ $w == *[\$\"\'\\]* ]]; then
            echo "$0: ExecStart word this test cannot expand: $w"
            return 1
        elif [ "$w" = qed ]; then
            argv+=("$plugin")
        else
            argv+=("$w")
        fi
    done
}

# start_activated NAME ADDRESS [STRACE-OUTPUT]: the service's argv
# under systemd-socket-activate listening on ADDRESS (host:port or a
# Unix socket), like start_nbdkit (messages in $tmpdir/NAME.log,
# stopped by stop_nbdkit NAME), optionally under strace -f.  nbdkit
# starts on the first connection.  Fails if ADDRESS is in use.
start_activated ()
{
    local name=$1 address=$2 trace=${3:-} i prefix=()
    [ -z "$trace" ] || prefix=(strace -f -qq -o "$trace")
    ( exec "${prefix[@]}" systemd-socket-activate -l "$address" -- \
           "${argv[@]}" 2> "$tmpdir/$name.log" ) &
    eval "_nbdkit_pid_$name=$!"
    cleanup_fn stop_nbdkit "$name"
    for (( i=0; i < 300; i++ )); do
        grep -q "^Listening on " "$tmpdir/$name.log" && return 0
        if ! kill -0 "$(eval echo \$_nbdkit_pid_$name)" 2>/dev/null; then
            eval "_nbdkit_pid_$name="
            echo "$0: systemd-socket-activate $name exited:"
            cat "$tmpdir/$name.log"
            return 1
        fi
        sleep 0.1
    done
    echo "$0: systemd-socket-activate $name did not listen"
    cat "$tmpdir/$name.log"
    return 1
}

#----------------------------------------------------------------------
# 1. The shipped configuration (every image of the state directory,
# one export each), on a Unix socket, with -v added to the options so
# that stop_nbdkit sees the connections close.

mkdir "$tmpdir/images"
qemu-img create -q -f qed -o cluster_size=64k "$tmpdir/images/a.qed" 64M
qemu-img create -q -f qed "$tmpdir/images/b.qed" 1G
service_argv NBDKIT_OPTIONS="-v ${env[NBDKIT_OPTIONS]}" \
    NBDKIT_QED_ARGS="${env[NBDKIT_QED_ARGS]/#dir=$statedir/dir=$tmpdir/images}"
printf '%q ' "${argv[@]}"; echo
sock=$tmpdir/nbdkit-qed.sock
start_activated dir "$sock"
uri="nbd+unix:///?socket=$sock"

# Not started before a client comes; started by the first one.
must_fail grep -q "nbdkit.*debug" "$tmpdir/dir.log"
nbdinfo --list "$uri" > "$tmpdir/list"
cat "$tmpdir/list"
grep 'export="a.qed"' "$tmpdir/list"
grep 'export="b.qed"' "$tmpdir/list"
grep "Execing " "$tmpdir/dir.log"
grep "socket activation" "$tmpdir/dir.log" ||
    grep "LISTEN_FDS" "$tmpdir/dir.log"
[ "$(nbdinfo --size "nbd+unix:///a.qed?socket=$sock")" = $(( 64 << 20 )) ]
qemu-io -f raw -c 'write -P 0x51 0 1M' -c 'write -P 0x52 63M 1M' \
    "nbd+unix:///a.qed?socket=$sock"
qemu-io -f raw -c 'read -P 0x51 0 1M' -c 'read -P 0 1M 62M' \
    -c 'read -P 0x52 63M 1M' "nbd+unix:///a.qed?socket=$sock"
stop_nbdkit dir
grep -F "debug: qed: close" "$tmpdir/dir.log"

qemu-img check "$tmpdir/images/a.qed"
qemu-img check "$tmpdir/images/b.qed"
qemu-io -f qed -c 'read -P 0x51 0 1M' -c 'read -P 0x52 63M 1M' \
    "$tmpdir/images/a.qed"

#----------------------------------------------------------------------
# 2. One image (file=), over TCP on the loopback address as the socket
# unit listens (another port than 10809: that one may be in use),
# read-only (-r) and then writable, and under strace where it can be:
# every system call nbdkit makes must pass the unit's
# SystemCallFilter (systemd would answer EPERM otherwise).

qemu-img create -q -f qed "$tmpdir/disk.qed" 100M
qemu-io -f qed -c 'write -P 0x41 0 64k' "$tmpdir/disk.qed"
filter=$(unit_values "$service" SystemCallFilter)
[ "$filter" = @system-service ]
[ "$(unit_values "$service" SystemCallErrorNumber)" = EPERM ]
trace=
if [ ${#_nbdkit_wrapper[@]} -gt 0 ]; then
    echo "$0: not checking the system calls: nbdkit runs under ${_nbdkit_wrapper[0]}"
elif ! strace -V >/dev/null 2>&1 ||
     ! strace -f -qq -o /dev/null true 2>/dev/null; then
    echo "$0: not checking the system calls: strace does not work here"
elif ! systemd-analyze syscall-filter @system-service >/dev/null 2>&1; then
    echo "$0: not checking the system calls: no systemd-analyze syscall-filter"
else
    trace=$tmpdir/trace
fi

# start_tcp NAME ARGS...: start_activated on 127.0.0.1 and a free
# port, in $port.
start_tcp ()
{
    local name=$1 i; shift
    for (( i=0; i < 20; i++ )); do
        port=$(( 20000 + RANDOM % 40000 ))
        start_activated "$name" "127.0.0.1:$port" "$@" && return 0
        grep -q "in use" "$tmpdir/$name.log" || return 1
    done
    return 1
}

service_argv NBDKIT_OPTIONS="-v -r" NBDKIT_QED_ARGS="file=$tmpdir/disk.qed"
start_tcp ro
qemu-io -f raw -r -c 'read -P 0x41 0 64k' "nbd://127.0.0.1:$port"
must_fail qemu-io -f raw -c 'write -P 0x42 0 64k' "nbd://127.0.0.1:$port"
stop_nbdkit ro

service_argv NBDKIT_OPTIONS="-v" NBDKIT_QED_ARGS="file=$tmpdir/disk.qed"
start_tcp rw $trace
[ "$(nbdinfo --size "nbd://127.0.0.1:$port")" = $(( 100 << 20 )) ]
nbdinfo "nbd://127.0.0.1:$port" > "$tmpdir/info"
grep "can_flush: true" "$tmpdir/info" || grep "is_read_only: false" "$tmpdir/info"
qemu-io -f raw -c 'write -P 0x42 64k 64k' -c 'write -z 128k 64k' \
    -c 'discard 0 64k' -c 'flush' "nbd://127.0.0.1:$port"
qemu-io -f raw -c 'read -P 0 0 64k' -c 'read -P 0x42 64k 64k' \
    -c 'read -P 0 128k 64k' "nbd://127.0.0.1:$port"
if [ -n "$trace" ]; then
    # stop_nbdkit would signal strace: signal nbdkit (its child) once
    # the connections are closed, then strace exits with its status.
    tracer=$_nbdkit_pid_rw
    for (( i=0; i < 100; i++ )); do
        [ "$(grep -c ': debug: [a-z]*: close$' "$tmpdir/rw.log")" -ge \
          "$(grep -c ': debug: [a-z]*: open readonly=' "$tmpdir/rw.log")" ] &&
            break
        sleep 0.1
    done
    kill "$(cat "/proc/$tracer/task/$tracer/children")"
    _nbdkit_pid_rw=
    status=0
    wait "$tracer" || status=$?
    if [ $status != 0 ]; then
        echo "$0: nbdkit under strace exited with status $status:"
        cat "$tmpdir/rw.log"
        exit 1
    fi
else
    stop_nbdkit rw
fi
qemu-img check "$tmpdir/disk.qed"
qemu-io -f qed -c 'read -P 0x42 64k 64k' "$tmpdir/disk.qed"

if [ -n "$trace" ]; then
    # The groups expanded to the names of system calls.
    expand_group ()
    {
        local w
        for w in $(systemd-analyze syscall-filter "$1" |
                   sed -e '1d' -e 's/#.*//'); do
            case $w in
                @*) expand_group "$w" ;;
                *) echo "$w" ;;
            esac
        done
    }
    expand_group "$filter" | sort -u > "$tmpdir/allowed"
    # What nbdkit called: from the execve of nbdkit on (before it was
    # systemd-socket-activate, whose calls are systemd's own).
    awk '/execve\("[^"]*\/nbdkit"/ { on = 1 } on' "$trace" |
        sed -n 's/^[0-9]* *\([a-z_0-9]*\)(.*/\1/p; s/^[0-9]* *<\.\.\. \([a-z_0-9]*\) resumed>.*/\1/p' |
        sort -u > "$tmpdir/called"
    cat "$tmpdir/called"
    grep -x openat "$tmpdir/called"
    grep -x fcntl "$tmpdir/called"       # the OFD locks
    comm -23 "$tmpdir/called" "$tmpdir/allowed" > "$tmpdir/denied"
    if [ -s "$tmpdir/denied" ]; then
        echo "$0: system calls that SystemCallFilter=$filter denies:"
        cat "$tmpdir/denied"
        exit 1
    fi
fi

#----------------------------------------------------------------------
# 3. systemd-analyze verify accepts the units, where it works without
# a running systemd: it is tried on a unit known to be good first.

cat > "$tmpdir/qed-known-good.service" <<EOF
[Service]
ExecStart=$(command -v true)
EOF
if ! command -v systemd-analyze >/dev/null; then
    echo "$0: not verifying the units: no systemd-analyze"
elif ! systemd-analyze verify --man=no "$tmpdir/qed-known-good.service" \
        > "$tmpdir/verify" 2>&1 || [ -s "$tmpdir/verify" ]; then
    cat "$tmpdir/verify"
    echo "$0: not verifying the units: systemd-analyze verify does not work here"
else
    status=0
    systemd-analyze verify --man=no "$socket" "$service" \
        > "$tmpdir/verify" 2>&1 || status=$?
    cat "$tmpdir/verify"
    [ $status = 0 ]
    [ ! -s "$tmpdir/verify" ]
fi
