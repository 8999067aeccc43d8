#!/usr/bin/env bash
# nbdkit-qed benchmarks: our plugin against qemu-nbd and a raw file.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   bench/bench.sh [PLUGIN]
#
# Runs the same workloads (fio's nbd engine, or bench/nbd-writer for
# writes with FUA, over a Unix socket) against three servers:
#   ours      nbdkit + PLUGIN on a QED image
#   qemu-nbd  qemu-nbd -f qed -e 64 --cache=writeback --aio=threads -t,
#             on the same kind of QED image
#   raw-file  nbdkit's file plugin on a raw file (the ceiling)
# then, in the direct section, the same workloads with O_DIRECT
# against qemu-nbd's two ways of doing it:
#   ours-direct        ours with cache=none
#   qemu-nbd-native    qemu-nbd --cache=none --aio=native
#   qemu-nbd-io_uring  qemu-nbd --cache=none --aio=io_uring (skipped,
#                      and the report says so, where QEMU cannot)
# then times nbdcopy of a half-allocated image, the open of a 1 TiB
# sparse and a 16 GiB allocated image, resident memory (idle, and
# under random load on a 1 TiB image), and the check of the images
# (our tests/nbd/qedcheck against qemu-img check).  bench/scale.sh
# measures the open, first read and memory of much larger images.
#
# Each workload runs RUNS times with the servers interleaved (in a
# rotating order), each run on its own new image and a new server,
# with the page cache dropped before the server starts (as root):
# empty for the allocating workloads, else with its first FILL_SIZE
# bytes written sequentially through the same server just before.
# The report names the file system, and gives medians: throughput and
# the ratios ours/qemu-nbd and ours/raw-file (higher is better for
# ours) with the targets; the latency percentiles of the workloads that
# keep one request in flight; the server's peak RSS (VmHWM) and CPU
# time per request.  It goes to stdout and to OUT.  Not part of make
# check.
#
# Environment, besides those described in bench/common.sh (PLUGIN,
# BUILD_DIR, BENCH_DIR, DROP_CACHES, ALLOC_IOS, RT, FILL_SIZE,
# SEQ_ALLOC_SIZE, RAND_ALLOC_SIZE, CLUSTER_SIZE):
#   RUNS        runs per workload and server [3]
#   MEM_RT      seconds of random load for the memory test [20]
#   SECTIONS    any of: fio direct copy open mem check [fio copy open
#               mem check]
#   WORKLOADS   workloads [all]: seqwrite1m-alloc seqread1m randread4k
#               randwrite4k-inplace randwrite4k-alloc randread4k-4conn
#               randrw4k-4conn randwrite64k-alloc-4conn alloc4k-fsync1
#               alloc4k-fua-qd16 journal64k randrw70-qd1 randrw4k-64conn
#               (see workload in common.sh)
#   SERVERS     any of: ours qemu-nbd raw-file [all three]; for the
#               fio, copy, open and mem sections
#   DIRECT_WORKLOADS  workloads of the direct section [WORKLOADS]
#   DIRECT_SERVERS    any of: ours-direct qemu-nbd-native
#               qemu-nbd-io_uring [all three]
#   OUT         where the report is also written [bench/results-latest.txt]
#   WARM_UP_MIB MiB written and deleted before measuring [8192]
#
# Needs nbdkit, qemu-img, qemu-nbd, qemu-io, fio (nbd engine), nbdinfo,
# nbdcopy, jq and make.  See the README for how long it takes.

# Lists of servers, workloads and a run's numbers are words in strings,
# split on purpose:
# shellcheck disable=SC2046,SC2086,SC2206

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/common.sh
source "$here/common.sh"

bench_setup "${1:-}"
RUNS=${RUNS:-3}
MEM_RT=${MEM_RT:-20}
SECTIONS=${SECTIONS:-fio copy open mem check}
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
SERVERS=${SERVERS:-ours qemu-nbd raw-file}
DIRECT_WORKLOADS=${DIRECT_WORKLOADS:-$WORKLOADS}
DIRECT_SERVERS=${DIRECT_SERVERS:-ours-direct qemu-nbd-native qemu-nbd-io_uring}
OUT=${OUT:-$here/results-latest.txt}
CLK_TCK=$(getconf CLK_TCK)

#----------------------------------------------------------------------
# The report.

report=$dir/report.txt
: >"$report"
say () { echo "$*" | tee -a "$report"; }

# Per workload and server, the values of every run: R throughput, C
# server CPU per request, H the server's VmHWM (MiB), P50 P99 P999
# latency percentiles (us).
declare -A R C H P50 P99 P999
declare -A UNIT CUNIT QD1
results=()          # workloads in the order they ran

# record WORKLOAD SERVER "VALUE CPU [HWM [P50 P99 P99.9]]": a failed
# run is "fail" in every array, a number not measured "-".
record ()
{
    local w=$1 s=$2 v n=-
    set -- $3
    v=$(awk -v v="${1:-}" 'BEGIN { if (v != "") printf "%.1f", v }')
    [ -n "$v" ] || n=fail
    R[$w,$s]="${R[$w,$s]:-} ${v:-fail}"
    C[$w,$s]="${C[$w,$s]:-} ${2:-$n}"
    H[$w,$s]="${H[$w,$s]:-} ${3:-$n}"
    P50[$w,$s]="${P50[$w,$s]:-} ${4:-$n}"
    P99[$w,$s]="${P99[$w,$s]:-} ${5:-$n}"
    P999[$w,$s]="${P999[$w,$s]:-} ${6:-$n}"
    has "${results[*]:-}" "$w" || results+=("$w")
}

# interleave WORKLOAD WHAT SERVERS MEASURE...: RUNS runs of every
# server of SERVERS, in the rotating order; "MEASURE... SERVER RUN"
# prints "VALUE CPU [HWM P50 P99 P99.9]" (WHAT says in which units,
# for the log), which is recorded.
interleave ()
{
    local w=$1 what=$2 servers=$3 r s v
    shift 3
    for ((r = 0; r < RUNS; r++)); do
        for s in $(order "$r" $servers); do
            v=$("$@" "$s" "$r")
            log "$w run $((r + 1)) $s: ${v:-FAILED} ($what)"
            record "$w" "$s" "$v"
        done
    done
}

#----------------------------------------------------------------------
# Workloads.

# measure_fio WORKLOAD SERVER [RUN]: prints "VALUE CPU HWM P50 P99
# P99.9" (VALUE in the workload's unit, CPU the server's microseconds
# per request, HWM its peak RSS in MiB, the latency percentiles in
# microseconds), or nothing on failure.
measure_fio ()
{
    local w=$1 s=$2 out t0 t1 hwm t rm0

    workload "$w"
    prepare_image "$s" || return 1
    start_server "$s" "$img" || return 1
    t0=$(cpu_ticks "$server_pid")
    out=$(run_workload)
    t1=$(cpu_ticks "$server_pid")
    hwm=$(mem_of "$server_pid")
    stop_server
    # On a file system mounted with discard, this is where an
    # allocating run's many extents cost (see ALLOC_IOS).
    rm0=$(now_ns)
    rm -f "$img"
    t=$(( ($(now_ns) - rm0) / 1000000 ))
    [ "$t" -lt 2000 ] || log "removing the image of $w on $s took $t ms"
    [ -n "$out" ] || return 1
    set -- $out
    case $unit in
        IOPS) echo -n "$1" ;;
        *)    echo -n "$2" ;;
    esac
    awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$3" -v h="${hwm#* }" \
        -v p="$4 $5 $6" \
        'BEGIN { printf " %.2f %s %s\n", (n > 0 ? t / hz * 1e6 / n : 0), h, p }'
}

# The most the machine was busy, in a 2-second sample with nothing of
# ours running, before each workload: others' load disturbs the runs.
OTHERS_BUSY=0
sample_others ()
{
    local b
    b=$(check_quiet)
    [ "$b" -gt "$OTHERS_BUSY" ] && OTHERS_BUSY=$b
}

# run_workloads "WORKLOADS" "SERVERS"
run_workloads ()
{
    local w
    for w in $1; do
        sample_others
        workload "$w"
        [ "$tool" = nbd-writer ] && ensure_built bench/nbd-writer
        UNIT[$w]=$unit
        CUNIT[$w]="us/req"
        [ "$qd" = 1 ] && [ "$nj" = 1 ] && QD1[$w]=1
        interleave "$w" "$unit, server us/request, peak RSS MiB, p50 p99 p99.9 us" \
            "$2" measure_fio "$w"
    done
}

# The direct section's servers: those of DIRECT_SERVERS that serve
# here, in DIRECT_USABLE.  QEMU built without io_uring (or a kernel
# that refuses it) cannot serve with --aio=io_uring: that server is
# left out, and DIRECT_NOTES says why, for the report.
find_direct_servers ()
{
    local s
    DIRECT_USABLE="" DIRECT_NOTES=""
    for s in $DIRECT_SERVERS; do
        mkimg "$s" "$dir/probe.img" 64M
        if start_server "$s" "$dir/probe.img" 2>"$dir/probe.err" &&
           nbdcopy "$uri" - >/dev/null 2>>"$dir/probe.err"; then
            DIRECT_USABLE="$DIRECT_USABLE $s"
        else
            DIRECT_NOTES="$DIRECT_NOTES  $s left out: it does not serve here ($(tail -n 1 "$dir/probe.err"))
"
        fi
        stop_server
        rm -f "$dir/probe.img"
    done
}

#----------------------------------------------------------------------
# nbdcopy of a half-allocated 4 GiB image (every other MiB) to a raw
# file.  Reported in MiB/s of the virtual disk (4096 / seconds); the
# CPU column is the server's CPU milliseconds for the whole copy.

make_half_images ()
{
    local i args=()
    qemu-img create -q -f qed -o cluster_size="$CLUSTER_BYTES" \
        "$dir/half.qed" 4G || return 1
    for ((i = 0; i < 2048; i++)); do
        args+=(-c "write -q -P $((i % 255 + 1)) $((i * 2))M 1M")
    done
    qemu-io -f qed "${args[@]}" "$dir/half.qed" || return 1
    # The raw equivalent, sparse: holes where the QED image has none.
    qemu-img convert -f qed -O raw "$dir/half.qed" "$dir/half.raw"
}

# measure_copy SERVER RUN: prints "MiB/s CPU-ms HWM" of one nbdcopy.
measure_copy ()
{
    local s=$1 run=$2 img t0 t1 c0 c1 hwm dst=$dir/copy-out.raw
    case $s in
        raw-file) img=$dir/half.raw ;;
        *)        img=$dir/half.qed ;;
    esac
    rm -f "$dst"
    start_server "$s" "$img" || return 1
    c0=$(cpu_ticks "$server_pid")
    t0=$(now_ns)
    if ! nbdcopy "$uri" "$dst" >&2; then
        stop_server
        return 1
    fi
    t1=$(now_ns)
    c1=$(cpu_ticks "$server_pid")
    hwm=$(mem_of "$server_pid")
    stop_server
    # The first run of each server also checks the copy.
    if [ "$run" = 0 ] && ! cmp "$dst" "$dir/half.raw" >&2; then
        log "nbdcopy through $s: the copy differs from the image"
        return 1
    fi
    rm -f "$dst"
    awk -v t="$((t1 - t0))" -v c=$((c1 - c0)) -v hz="$CLK_TCK" \
        -v h="${hwm#* }" \
        'BEGIN { printf "%.1f %.0f %s\n", 4096 / (t / 1e9), c / hz * 1000, h }'
}

run_copy_section ()
{
    local w=nbdcopy-half4g
    make_half_images || die "cannot make the half-allocated images"
    sample_others
    UNIT[$w]=MiB/s
    CUNIT[$w]="ms/copy"
    interleave "$w" "MiB/s, server CPU ms, peak RSS MiB" "$SERVERS" measure_copy
    rm -f "$dir"/half.*
}

#----------------------------------------------------------------------
# The tables, one set per section (servers).  In each, the first of
# the servers whose name begins with "ours" is compared with each of
# the others.

# Target: minimum ratio to qemu-nbd, and to raw-file (or nothing).
target_of ()
{
    case $1 in
        seqwrite1m-alloc)          echo "1.5 0.9" ;;
        randwrite4k-alloc)         echo "5 0.9" ;;
        *)                         echo "1 0.9" ;;
    esac
}

# Short names for the columns.
label ()
{
    case $1 in
        ours-direct)       echo ours-dir ;;
        qemu-nbd)          echo qemu ;;
        qemu-nbd-native)   echo q-native ;;
        qemu-nbd-io_uring) echo q-uring ;;
        raw-file)          echo raw ;;
        *)                 echo "$1" ;;
    esac
}

# medof ARRAY KEY: the median of the runs in ARRAY[KEY].
medof ()
{
    local -n a=$1
    median ${a[$2]:-}
}

# row WORKLOAD UNIT VALUE...: a line of a table, each VALUE in a column
# of its own, but those beginning with @ (free text) after two spaces.
row ()
{
    local line v
    line=$(printf "%-25s %-7s" "$1" "$2")
    shift 2
    for v in "$@"; do
        if [ "${v#@}" = "$v" ]; then
            line="$line$(printf " %9s" "$v")"
        else
            line="$line  ${v#@}"
        fi
    done
    say "$line"
}

# compare_row ARRAY WORKLOAD LABEL UNIT KIND: the row of WORKLOAD in a
# table of ARRAY (R, C, H, P50, P99 or P999), headed LABEL: the median
# of each server ($me, then each of refs), the ratios of $me's to each,
# and for KIND "higher" (throughput: at least target_of times each) or
# "lower" (at most each qemu-nbd's) whether $me meets the target.
compare_row ()
{
    local arr=$1 w=$2 label=$3 unit=$4 kind=$5 s m r rt tq tr pass=PASS vals=()
    m=$(medof "$arr" "$w,$me")
    vals=("$(fmt "$m")")
    for s in "${refs[@]}"; do vals+=("$(fmt "$(medof "$arr" "$w,$s")")"); done
    [ -n "$m" ] || pass=FAIL
    set -- $(target_of "$w")
    tq=$1 tr=$2
    for s in "${refs[@]}"; do
        r=$(medof "$arr" "$w,$s")
        vals+=("$(ratio "$m" "$r")")
        case $kind,$s in
            higher,raw-file) rt=$tr ;;
            higher,*)        rt=$tq ;;
            lower,qemu-nbd*) rt= ;;
            *)               continue ;;
        esac
        # Nothing to compare with: say so rather than pass or fail.
        if [ -z "$r" ]; then
            [ "$pass" = PASS ] && pass="PASS?"
        # Compare unrounded ratios: 0.896 is not >= 0.9.
        elif [ -n "$rt" ] && ! ge "$(ratio "$m" "$r" %.6f)" "$rt"; then
            pass=FAIL
        elif [ -z "$rt" ] && ! ge "$r" "$m"; then
            pass=FAIL
        fi
    done
    case $kind in
        higher)
            has "${refs[*]}" raw-file || tr=
            vals+=("@$(printf '%-23s' ">=${tq}x qemu${tr:+, >=${tr}x raw}")" "@$pass") ;;
        lower)  vals+=("@$pass") ;;
    esac
    row "$label" "$unit" "${vals[@]}"
}

# print_tables "SERVERS" "WORKLOADS": the tables of those workloads
# that ran on those servers.  The first server whose name begins with
# "ours" ($me) is compared with each of the others (refs).
print_tables ()
{
    local me="" refs=() ws=() head=() w s any=""

    for s in $1; do
        if [ -z "$me" ] && [ "${s#ours}" != "$s" ]; then
            me=$s
        else
            refs+=("$s")
        fi
    done
    if [ -z "$me" ]; then
        me=${refs[0]}
        refs=("${refs[@]:1}")
    fi
    for w in $2; do
        [ -n "${R[$w,$me]:-}" ] && ws+=("$w")
    done
    [ ${#ws[@]} -gt 0 ] || return 0
    for s in $me "${refs[@]}"; do head+=("$(label "$s")"); done
    for s in "${refs[@]}"; do head+=("/$(label "$s")"); done
    for w in "${ws[@]}"; do [ -n "${QD1[$w]:-}" ] && any=1; done

    say "Throughput, medians of $RUNS runs (RT=${RT}s each, servers interleaved) on"
    say "$(fs_of_dir), $(caches_note);"
    say "higher is better.  Others' load before each workload: at most ${OTHERS_BUSY}% CPU."
    say "Ratios: $(label "$me") / each.  Targets: >= 1x every qemu-nbd (more where"
    say "named)$(has "${refs[*]}" raw-file && echo ", >= 0.9x raw-file")."
    row workload unit "${head[@]}" "@$(printf '%-23s' target)" @result
    for w in "${ws[@]}"; do
        compare_row R "$w" "$w" "${UNIT[$w]}" higher
    done

    if [ -n "$any" ]; then
        say ""
        say "Latency of the workloads with one request in flight: completion latency"
        say "of the reads and writes (flushes not counted), medians of the runs'"
        say "p50, p99 and p99.9, in us; LOWER is better.  Ratios: $(label "$me") / each."
        say "Target: p99 <= every qemu-nbd's."
        row workload pct "${head[@]}" @result
        for w in "${ws[@]}"; do
            [ -n "${QD1[$w]:-}" ] || continue
            compare_row P50 "$w" "$w" p50 none
            compare_row P99 "$w" "" p99 lower
            compare_row P999 "$w" "" p99.9 none
        done
    fi

    say ""
    say "Peak RSS of the server (VmHWM, MiB), medians; lower is better."
    say "Ratios: $(label "$me") / each.  Target: <= every qemu-nbd's."
    row workload unit "${head[@]}" @result
    for w in "${ws[@]}"; do
        compare_row H "$w" "$w" MiB lower
    done

    say ""
    say "Server CPU time (user + system, all threads) per request, medians;"
    say "lower is better (nbdcopy: CPU milliseconds for the whole copy):"
    row workload unit "${head[@]}"
    for w in "${ws[@]}"; do
        compare_row C "$w" "$w" "${CUNIT[$w]}" none
    done

    say ""
    say "Every run, in order (throughput | server CPU per request | peak RSS MiB"
    say "| p99 us):"
    for w in "${ws[@]}"; do
        for s in $me "${refs[@]}"; do
            say "  $(printf "%-25s %-17s" "$w" "$s")${R[$w,$s]:-} |${C[$w,$s]:-} |${H[$w,$s]:-} |${P99[$w,$s]:-}"
        done
    done
}

#----------------------------------------------------------------------
# Open time, memory, check.

big=$dir/big-1t
full=$dir/full-16g

# The 1 TiB sparse image, and a 16 GiB image whose every cluster is
# allocated, made by bench/qed-allocated: its tables map every cluster,
# its data is a hole of the host file (written through a server, it
# would cost a data extent per cluster, minutes to delete on a file
# system mounted with discard).  raw-file gets sparse raw files of the
# same sizes.
make_open_images ()
{
    if [ ! -f "$big.qed" ]; then
        mkimg ours "$big.qed" 1T && mkimg raw-file "$big.raw" 1T || return 1
    fi
    if [ ! -f "$full.qed" ]; then
        ensure_built bench/qed-allocated
        "$BUILD_DIR/bench/qed-allocated" -c "$CLUSTER_BYTES" \
            $((16 << 30)) "$full.qed" >/dev/null &&
            mkimg raw-file "$full.raw" 16G || return 1
    fi
}

image_for ()
{
    case $1 in raw-file) echo "$2.raw" ;; *) echo "$2.qed" ;; esac
}

declare -A OPEN_MS

run_open_section ()
{
    local exe=$BUILD_DIR/bench/qed-open name base s i t0 t1 d line
    local -A T

    make_open_images || die "cannot make the open/check images"
    ensure_built bench/qed-open

    say ""
    say "Open (engine): qed_image_open + qed_image_enable_writes, as the plugin opens,"
    say "  timed in-process (bench/qed-open.c), median of 20 opens; first open separately:"
    for name in "1 TiB sparse:$big" "16 GiB allocated:$full"; do
        base=${name#*:}
        line=$("$exe" -n 20 "$base.qed") || die "qed-open failed on $base.qed"
        # open-ms FIRST MEDIAN enable-ms MEDIAN close-ms MEDIAN rss-kib N
        set -- $line
        OPEN_MS[${name%%:*}]=$(awk -v a="$3" -v b="$5" 'BEGIN { print a + b }')
        say "  $(printf "%-17s" "${name%%:*}") open $3 ms + enable writes $5 ms (first open $2 ms), close $7 ms, VmRSS after open $9 KiB"
    done

    say "Open (server): wall time of 'nbdinfo --size -- [ SERVER ]' (start by socket"
    say "  activation, open, handshake, exit), median of 10; raw-file serves a sparse"
    say "  raw file of the same size, so ours - raw-file is the cost of the QED open:"
    for name in "1 TiB sparse:$big" "16 GiB allocated:$full"; do
        base=${name#*:}
        for s in $SERVERS; do T[$s]=; done
        for i in $(seq 10); do
            for s in $(order "$i"); do
                t0=$(now_ns)
                server_cmd "$s" "$(image_for "$s" "$base")"
                nbdinfo --size -- [ "${cmd[@]}" ] >/dev/null ||
                    log "nbdinfo against $s failed"
                t1=$(now_ns)
                T[$s]="${T[$s]} $(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e6 }')"
            done
        done
        line=
        for s in $SERVERS; do
            d=$(median ${T[$s]})
            line="$line $s $d ms,"
            T[$s]=$d
        done
        if [ -n "${T[ours]:-}" ] && [ -n "${T[raw-file]:-}" ]; then
            line="$line ours - raw-file $(awk -v a="${T[ours]}" -v b="${T[raw-file]}" 'BEGIN { printf "%+.2f", a - b }') ms"
        fi
        if [ -n "${T[qemu-nbd]:-}" ] && [ -n "${T[raw-file]:-}" ]; then
            line="$line, qemu-nbd - raw-file $(awk -v a="${T[qemu-nbd]}" -v b="${T[raw-file]}" 'BEGIN { printf "%+.2f", a - b }') ms"
        fi
        say "  $(printf "%-17s" "${name%%:*}")$line"
    done

    say "Memory, idle (VmRSS/VmHWM MiB of the server after one nbdinfo connection):"
    for name in "1 TiB sparse:$big" "16 GiB allocated:$full"; do
        base=${name#*:}
        line=
        for s in $SERVERS; do
            start_server "$s" "$(image_for "$s" "$base")" || continue
            set -- $(mem_of "$server_pid")
            stop_server
            line="$line $s $1/$2,"
        done
        say "  $(printf "%-17s" "${name%%:*}")${line%,}"
    done
}

# check_times IMAGE: qedcheck and qemu-img check on IMAGE, RUNS times
# each, interleaved; prints the lines of the report.
check_times ()
{
    local image=$1 r i t0 t1 st qst ours=() qemu=() n
    for ((r = 0; r < RUNS; r++)); do
        for i in $((r % 2)) $(((r + 1) % 2)); do
            t0=$(now_ns)
            if [ "$i" = 0 ]; then
                "$BUILD_DIR/tests/nbd/qedcheck" "$image" >"$dir/qedcheck.out"
                st=$?
            else
                qemu-img check -f qed "$image" >"$dir/qemu-check.out" 2>&1
                qst=$?
            fi
            t1=$(now_ns)
            n=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')
            if [ "$i" = 0 ]; then ours+=("$n"); else qemu+=("$n"); fi
        done
    done
    say "  $(awk '/allocated-clusters/ { print $2 }' "$dir/qedcheck.out") clusters allocated, $(du -m "$image" | cut -f1) MiB on disk; median of $RUNS:"
    say "  qedcheck $(median "${ours[@]}") s (exit $st, corruptions $(awk '$1 == "corruptions" { print $2 }' "$dir/qedcheck.out"), leaks $(awk '$1 == "leaks" { print $2 }' "$dir/qedcheck.out")),"
    say "  qemu-img check $(median "${qemu[@]}") s (exit $qst: $(grep -E 'leaked|corrupt|No errors' "$dir/qemu-check.out" | head -n 2 | tr '\n' ' '))"
    # QEMU 7.2 miscounts: about one leak per cluster_size^2 bytes of
    # file, on any image (see the format notes).
    say "  (QEMU 7.2's spurious leaks for this file size: $(($(stat -c %s "$image") / CLUSTER_BYTES / CLUSTER_BYTES)))"
}

run_mem_section ()
{
    local s img out line pass
    say ""
    local cap=()
    # A cap of ALLOC_IOS requests still touches every L2 table of the
    # 1 TiB (512 of them with 64 KiB clusters) many times over.
    [ "$ALLOC_IOS" -gt 0 ] && cap=(--number_ios=$((ALLOC_IOS / 4)))
    say ""
    say "Memory under load: fio randrw 4K, 4 connections x qd16, over the whole 1 TiB"
    say "  of a new sparse image for ${MEM_RT}s$([ "$ALLOC_IOS" -gt 0 ] && echo " or $ALLOC_IOS requests") (most writes"
    say "  allocate), on $(fs_of_dir); VmHWM = peak RSS:"
    for s in $SERVERS; do
        case $s in raw-file) img=$dir/mem.raw ;; *) img=$dir/mem.qed ;; esac
        mkimg "$s" "$img" 1T || continue
        start_server "$s" "$img" || continue
        out=$("$here/fio-nbd.sh" "$uri" randrw 4K 16 4 1T "$MEM_RT" --time_based \
                  "${cap[@]}")
        set -- $(mem_of "$server_pid")
        stop_server
        line="  $(printf "%-9s" "$s") VmRSS at end $1 MiB, VmHWM $2 MiB, $(fmt "${out%% *}") IOPS, image $(du -m "$img" | cut -f1) MiB on disk"
        case $s in
            ours)
                MEM_HWM=$2
                if ge 64 "$2"; then pass=PASS; else pass=FAIL; fi
                line="$line; target <= 64 MiB: $pass" ;;
            qemu-nbd) MEM_HWM_QEMU=$2 ;;
        esac
        say "$line"
        # Keep ours' image for the check below.
        [ "$s" = ours ] && has "$SECTIONS" check && mv "$img" "$dir/mem-ours.qed"
        rm -f "$img"
    done
    if [ -f "$dir/mem-ours.qed" ]; then
        ensure_built tests/nbd/qedcheck
        say "Check of the 1 TiB image ours wrote under that load (qemu-img check also"
        say "  says whether QEMU finds it consistent), warm page cache:"
        check_times "$dir/mem-ours.qed"
        rm -f "$dir/mem-ours.qed"
    fi
}

run_check_section ()
{
    make_open_images || die "cannot make the open/check images"
    ensure_built tests/nbd/qedcheck
    say ""
    say "Check of the 16 GiB allocated image, warm page cache:"
    check_times "$full.qed"
}

#----------------------------------------------------------------------

say "nbdkit-qed benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), source $(git -C "$srcdir" describe --always --dirty 2>/dev/null || echo '?')"
say "$(uname -sr), $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; $(nbdkit --version | head -n1), $(qemu-nbd --version | head -n1), $(fio --version)"
say "Images in $dir: $(fs_of_dir); $(caches_note)"
say "Cluster size $CLUSTER_SIZE; random allocating runs stop after RT=${RT}s$([ "$ALLOC_IOS" -gt 0 ] && echo " or ALLOC_IOS=$ALLOC_IOS requests"); plugin $PLUGIN"
say "CPU busy before the start (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"
say ""

warm_up
has "$SECTIONS" fio && run_workloads "$WORKLOADS" "$SERVERS"
has "$SECTIONS" copy && run_copy_section
print_tables "$SERVERS" "$WORKLOADS nbdcopy-half4g"
if has "$SECTIONS" direct; then
    find_direct_servers
    run_workloads "$DIRECT_WORKLOADS" "$DIRECT_USABLE"
    say ""
    say "Direct I/O (O_DIRECT: the servers bypass the host's page cache):"
    say "  ours-direct: ours with cache=none; q-native and q-uring: qemu-nbd"
    say "  --cache=none with --aio=native and --aio=io_uring."
    [ -n "$DIRECT_NOTES" ] && say "${DIRECT_NOTES%
}"
    print_tables "$DIRECT_USABLE" "$DIRECT_WORKLOADS"
fi
has "$SECTIONS" open && run_open_section
has "$SECTIONS" mem && run_mem_section
has "$SECTIONS" check && run_check_section

# Targets outside the tables.
if [ -n "${OPEN_MS[1 TiB sparse]:-}${MEM_HWM:-}" ]; then
    say ""
    if [ -n "${OPEN_MS[1 TiB sparse]:-}" ]; then
        if ge 50 "${OPEN_MS[1 TiB sparse]}"; then pass=PASS; else pass=FAIL; fi
        say "Target: open a 1 TiB sparse image < 50 ms: ${OPEN_MS[1 TiB sparse]} ms (engine, open + enable writes): $pass"
    fi
    if [ -n "${MEM_HWM:-}" ]; then
        if ge 64 "$MEM_HWM"; then pass=PASS; else pass=FAIL; fi
        say "Target: resident memory <= 64 MiB serving 1 TiB under random load: VmHWM $MEM_HWM MiB: $pass"
    fi
    if [ -n "${MEM_HWM:-}" ] && [ -n "${MEM_HWM_QEMU:-}" ]; then
        if ge "$MEM_HWM_QEMU" "$MEM_HWM"; then pass=PASS; else pass=FAIL; fi
        say "Target: that peak RSS <= qemu-nbd's ($MEM_HWM_QEMU MiB): $MEM_HWM MiB: $pass"
    fi
fi

say ""
say "CPU busy after the end (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"

for s in $ALL_SERVERS; do
    if [ -s "$dir/$s.log" ]; then
        log "$s wrote to its log ($dir/$s.log), most frequent lines:"
        sort "$dir/$s.log" | uniq -c | sort -rn | head -n 5 >&2
    fi
done
cp "$report" "$OUT" && log "report written to $OUT"
