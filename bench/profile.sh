#!/usr/bin/env bash
# nbdkit-qed benchmarks: where a server's time goes in one workload.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   bench/profile.sh WORKLOAD...
#
# For each WORKLOAD (the names of bench.sh) and each of SERVERS
# [ours raw-file], on a new image prepared as bench.sh prepares it:
#   1. counts, with perf stat on the server process, what each request
#      costs: futex calls, context switches, pwrite/pread/fdatasync
#      calls, CPU time;
#   2. samples the server with perf record (cpu-clock, DWARF call
#      graphs) on another new image, and prints the hottest functions
#      by self time and our engine's functions by inclusive time.
# The perf.data files stay in PROFILE_DIR [/tmp/nbdkit-qed-profile] for
# "perf report -i FILE".  Throughput under perf is lower than without
# it (tracepoints and sampling cost), so it is printed only as a
# sanity check.
#
# Without a usable perf (see "perf stat -e cpu-clock true"), or with
# PROFILER=callgrind, it runs our server under valgrind's callgrind
# instead for a short run (RT, default 5 s here), and prints
# callgrind_annotate's inclusive and exclusive top functions
# (instruction counts, not time: locks, sleeps and syscalls are
# invisible there).
#
# Environment: as bench.sh (PLUGIN, BENCH_DIR, RT, sizes), plus
# SERVERS, PROFILE_DIR, PROFILER (perf or callgrind), TOP (lines, 25).

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/common.sh
source "$here/common.sh"

[ $# -gt 0 ] || { sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 1; }
RT=${RT:-5}
bench_setup ""
SERVERS=${SERVERS:-ours raw-file}
PROFILE_DIR=${PROFILE_DIR:-/tmp/nbdkit-qed-profile}
TOP=${TOP:-25}
mkdir -p "$PROFILE_DIR" || exit 1

if [ -z "${PROFILER:-}" ]; then
    if perf stat -e cpu-clock true >/dev/null 2>&1; then
        PROFILER=perf
    else
        PROFILER=callgrind
    fi
fi

events=syscalls:sys_enter_futex,sched:sched_switch,syscalls:sys_enter_pwrite64,syscalls:sys_enter_pread64,syscalls:sys_enter_fdatasync,task-clock

# Our engine's and plugin's functions, for the inclusive list.
ours_re='\] (qed_|write_|alloc_|commit_|apply_|lookup|slice_|l2_cache|background|need_check|pwrite_logged|posix_|fill|table_|link_|pending_|prepare_|run_release|data_entry|inside_l2|gate_|__GI___lll_lock|___pthread_cond|__pthread_cond|pthread_mutex|pthread_rwlock)'

perf_one ()
{
    local w=$1 s=$2 base=$PROFILE_DIR/$1-$2 out ppid n

    # 1. Counts per request.
    workload "$w"
    prepare_image "$s" || return 1
    start_server "$s" "$img" || return 1
    perf stat -x, -e "$events" -p "$server_pid" -o "$base.stat" &
    ppid=$!
    sleep 0.2
    out=$(run_workload)
    kill -INT "$ppid"
    wait "$ppid"
    stop_server
    rm -f "$img"
    [ -n "$out" ] || return 1
    # shellcheck disable=SC2086 # the numbers fio-nbd.sh prints
    set -- $out
    n=$3
    echo "== $w on $s: $(printf '%.0f' "$1") IOPS, $(printf '%.0f' "$2") MiB/s under perf stat; $n requests"
    awk -F, -v n="$n" '
        $3 == "task-clock" { printf "   server CPU per request: %.1f us\n", $1 * 1000 / n }
        $3 ~ /:/ { sub(/.*:(sys_enter_)?/, "", $3);
                   printf "   %-14s per request: %.2f\n", $3, $1 / n }' "$base.stat"

    # 2. Samples.
    prepare_image "$s" || return 1
    start_server "$s" "$img" || return 1
    perf record -q -F 999 --call-graph dwarf,32768 -e cpu-clock \
        -p "$server_pid" -o "$base.data" 2>/dev/null &
    ppid=$!
    sleep 0.2
    run_workload >/dev/null
    kill -INT "$ppid"
    wait "$ppid"
    stop_server
    rm -f "$img"
    echo "   hottest functions, self (% of the server's samples):"
    perf report -i "$base.data" --no-children --sort dso,sym --stdio -g none \
        2>/dev/null | grep '%' | head -n "$TOP" | sed 's/^/   /'
    if [ "$s" = ours ]; then
        echo "   our functions and locks, inclusive (children, self):"
        perf report -i "$base.data" --children --sort sym --stdio -g none \
            2>/dev/null | grep '%' | grep -E "$ours_re" | head -n "$TOP" |
            sed 's/^/   /'
    fi
    echo "   (perf report -i $base.data)"
    return 0
}

callgrind_one ()
{
    local w=$1 s=$2 base=$PROFILE_DIR/$1-$2
    if [ "$s" != ours ]; then
        log "callgrind: only ours is profiled"
        return 0
    fi
    workload "$w"
    prepare_image "$s" || return 1
    rm -f "$base.callgrind"
    wrap=(valgrind --tool=callgrind --trace-children=no
          --callgrind-out-file="$base.callgrind")
    start_server "$s" "$img" || { wrap=(); return 1; }
    wrap=()
    run_workload >/dev/null
    stop_server
    rm -f "$img"
    echo "== $w on $s under callgrind (instructions; $base.callgrind):"
    echo "   inclusive:"
    callgrind_annotate --inclusive=yes "$base.callgrind" 2>/dev/null |
        grep -E '^ *[0-9,]+ ' | head -n "$TOP" | sed 's/^/   /'
    echo "   exclusive:"
    callgrind_annotate "$base.callgrind" 2>/dev/null |
        grep -E '^ *[0-9,]+ ' | head -n "$TOP" | sed 's/^/   /'
    return 0
}

warm_up
for w in "$@"; do
    for s in $SERVERS; do
        "${PROFILER}_one" "$w" "$s" || log "$w on $s failed"
    done
done
