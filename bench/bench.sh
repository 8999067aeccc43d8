#!/usr/bin/env bash
# nbdkit-qed benchmarks: our plugin against qemu-nbd and a raw file.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   bench/bench.sh [PLUGIN]
#
# Runs the same fio workloads (fio's nbd engine, over a Unix socket)
# against three servers:
#   ours      nbdkit + PLUGIN on a QED image
#   qemu-nbd  qemu-nbd -f qed -e 8 --cache=writeback --aio=threads -t,
#             on the same kind of QED image
#   raw-file  nbdkit's file plugin on a raw file (the ceiling)
# then times nbdcopy of a half-allocated image, the open of a 1 TiB
# sparse and a 16 GiB allocated image, resident memory (idle, and
# under random load on a 1 TiB image), and the check of the images
# (our tests/nbd/qedcheck against qemu-img check).
#
# Each workload runs RUNS times with the servers interleaved (in a
# rotating order), each run on its own new image: empty for the
# allocating workloads, else with its first FILL_SIZE bytes written
# sequentially through the same server just before.  The report gives
# medians, the ratios ours/qemu-nbd and ours/raw-file (higher is
# better for ours), the targets, and the server's CPU time per request.
# It goes to stdout and to OUT.  Not part of make check.
#
# Environment, besides those described in bench/common.sh (PLUGIN,
# BUILD_DIR, BENCH_DIR, RT, FILL_SIZE, SEQ_ALLOC_SIZE, RAND_ALLOC_SIZE,
# CLUSTER_SIZE):
#   RUNS        runs per workload and server [3]
#   MEM_RT      seconds of random load for the memory test [20]
#   SECTIONS    any of: fio copy open mem check [all]
#   WORKLOADS   fio workloads [all]: seqwrite1m-alloc seqread1m
#               randread4k randwrite4k-inplace randwrite4k-alloc
#               randrw4k-4conn randwrite64k-alloc-4conn
#   SERVERS     any of: ours qemu-nbd raw-file [all]
#   OUT         where the report is also written [bench/results-latest.txt]
#   WARM_UP_MIB MiB written and deleted before measuring [8192]
#
# Needs nbdkit, qemu-img, qemu-nbd, qemu-io, fio (nbd engine), nbdinfo,
# nbdcopy, jq and make.  About 15 minutes with the defaults.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/common.sh
source "$here/common.sh"

bench_setup "${1:-}"
RUNS=${RUNS:-3}
MEM_RT=${MEM_RT:-20}
SECTIONS=${SECTIONS:-fio copy open mem check}
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
SERVERS=${SERVERS:-ours qemu-nbd raw-file}
OUT=${OUT:-$here/results-latest.txt}
CLK_TCK=$(getconf CLK_TCK)

#----------------------------------------------------------------------
# Statistics and the report.

# median of the numbers given (ignores words that are not numbers).
median ()
{
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{ v[NR] = $1 }
             END { if (NR == 0) print "";
                   else if (NR % 2) print v[(NR + 1) / 2];
                   else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B [FORMAT]: A / B, "-" when either is missing.
ratio ()
{
    awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" \
        'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-";
                 else printf f, a / b }'
}

# ge A B: is A >= B (as numbers)?  False when A is "-" or empty.
ge () { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "-" && a != "" && a + 0 >= b + 0) }'; }

fmt ()
{
    awk -v v="$1" 'BEGIN { if (v == "") print "fail";
                           else if (v + 0 >= 100) printf "%.0f", v;
                           else printf "%.1f", v }'
}

report=$dir/report.txt
: >"$report"
say () { echo "$*" | tee -a "$report"; }

# The rotating order of the servers for run number $1.
order ()
{
    local -a s=($SERVERS)
    local n=${#s[@]} i
    for ((i = 0; i < n; i++)); do
        echo "${s[((i + $1) % n)]}"
    done
}

declare -A R        # R[workload,server] = the value of every run
declare -A C        # C[workload,server] = server CPU per request, every run
declare -A UNIT CUNIT
results=()          # workloads in the order they ran

# record WORKLOAD SERVER "VALUE CPU"
record ()
{
    local v= c=
    set -- "$1" "$2" $3
    [ -n "${3:-}" ] && v=$(awk -v v="$3" 'BEGIN { printf "%.1f", v }')
    [ -n "${4:-}" ] && c=$(awk -v v="$4" 'BEGIN { printf "%.1f", v }')
    R[$1,$2]="${R[$1,$2]:-} ${v:-fail}"
    C[$1,$2]="${C[$1,$2]:-} ${c:-fail}"
    has "${results[*]:-}" "$1" || results+=("$1")
}

# interleave WORKLOAD WHAT MEASURE...: RUNS runs of every server, in
# the rotating order; "MEASURE... SERVER RUN" prints "VALUE CPU" (WHAT
# says in which units, for the log), which is recorded.
interleave ()
{
    local w=$1 what=$2 r s v
    shift 2
    for ((r = 0; r < RUNS; r++)); do
        for s in $(order "$r"); do
            v=$("$@" "$s" "$r")
            log "$w run $((r + 1)) $s: ${v:-FAILED} ($what)"
            record "$w" "$s" "$v"
        done
    done
}

#----------------------------------------------------------------------
# fio workloads.

# measure_fio WORKLOAD SERVER [RUN]: prints "VALUE CPU" (VALUE in the
# workload's unit, CPU the server's microseconds per request), or
# nothing on failure.
measure_fio ()
{
    local w=$1 s=$2 out t0 t1

    workload "$w"
    prepare_image "$s" || return 1
    start_server "$s" "$img" || return 1
    t0=$(cpu_ticks "$server_pid")
    out=$(run_workload)
    t1=$(cpu_ticks "$server_pid")
    stop_server
    rm -f "$img"
    [ -n "$out" ] || return 1
    set -- $out
    case $unit in
        IOPS) echo -n "$1" ;;
        *)    echo -n "$2" ;;
    esac
    awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$3" \
        'BEGIN { printf " %.2f\n", (n > 0 ? t / hz * 1e6 / n : 0) }'
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

run_fio_section ()
{
    local w
    for w in $WORKLOADS; do
        sample_others
        workload "$w"
        UNIT[$w]=$unit
        CUNIT[$w]="us/req"
        interleave "$w" "$unit, server us/request" measure_fio "$w"
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

# measure_copy SERVER RUN: prints "MiB/s CPU-ms" of one nbdcopy.
measure_copy ()
{
    local s=$1 run=$2 img t0 t1 c0 c1 dst=$dir/copy-out.raw
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
    stop_server
    # The first run of each server also checks the copy.
    if [ "$run" = 0 ] && ! cmp "$dst" "$dir/half.raw" >&2; then
        log "nbdcopy through $s: the copy differs from the image"
        return 1
    fi
    rm -f "$dst"
    awk -v t="$((t1 - t0))" -v c=$((c1 - c0)) -v hz="$CLK_TCK" \
        'BEGIN { printf "%.1f %.0f\n", 4096 / (t / 1e9), c / hz * 1000 }'
}

run_copy_section ()
{
    local w=nbdcopy-half4g
    make_half_images || die "cannot make the half-allocated images"
    sample_others
    UNIT[$w]=MiB/s
    CUNIT[$w]="ms/copy"
    interleave "$w" "MiB/s, server CPU ms" measure_copy
    rm -f "$dir"/half.*
}

#----------------------------------------------------------------------
# The fio and nbdcopy tables.

# Target: minimum ratio to qemu-nbd, and to raw-file (or nothing).
target_of ()
{
    case $1 in
        seqwrite1m-alloc)          echo "1.5" ;;
        randwrite4k-alloc)         echo "5" ;;
        randwrite64k-alloc-4conn)  echo "1" ;;
        *)                         echo "1 0.9" ;;   # reads, in place
    esac
}

print_tables ()
{
    local w s o q rw oq or tq tr pass tgt
    local f="%-25s %-7s %9s %9s %9s %9s %9s  %-21s %s\n"

    say "Throughput, medians of $RUNS runs (RT=${RT}s each, servers interleaved);"
    say "higher is better.  Others' load before each workload: at most ${OTHERS_BUSY}% CPU."
    say "$(printf "$f" workload unit ours qemu-nbd raw-file ours/qemu ours/raw target result)"
    for w in "${results[@]}"; do
        o=$(median ${R[$w,ours]:-})
        q=$(median ${R[$w,qemu-nbd]:-})
        rw=$(median ${R[$w,raw-file]:-})
        oq=$(ratio "$o" "$q")
        or=$(ratio "$o" "$rw")
        set -- $(target_of "$w")
        tq=$1 tr=${2:-}
        pass=PASS
        # Nothing to compare with: say so rather than pass or fail.
        if { has "$SERVERS" qemu-nbd && [ -z "$q" ]; } ||
           { [ -n "$tr" ] && has "$SERVERS" raw-file && [ -z "$rw" ]; }; then
            pass="PASS?"
        fi
        # Compare unrounded ratios: 0.896 is not >= 0.9.
        if [ -n "$q" ] && ! ge "$(ratio "$o" "$q" %.6f)" "$tq"; then
            pass=FAIL
        fi
        if [ -n "$tr" ] && [ -n "$rw" ] &&
           ! ge "$(ratio "$o" "$rw" %.6f)" "$tr"; then
            pass=FAIL
        fi
        [ -n "$o" ] || pass=FAIL
        tgt=">=${tq}x qemu"
        [ -n "$tr" ] && tgt="$tgt, >=${tr}x raw"
        say "$(printf "$f" "$w" "${UNIT[$w]}" "$(fmt "$o")" "$(fmt "$q")" \
               "$(fmt "$rw")" "$oq" "$or" "$tgt" "$pass")"
    done

    say ""
    say "Server CPU time (user + system, all threads) per request, medians;"
    say "lower is better (nbdcopy: CPU milliseconds for the whole copy):"
    f="%-25s %-7s %9s %9s %9s %9s %9s\n"
    say "$(printf "$f" workload unit ours qemu-nbd raw-file ours/qemu ours/raw)"
    for w in "${results[@]}"; do
        o=$(median ${C[$w,ours]:-})
        q=$(median ${C[$w,qemu-nbd]:-})
        rw=$(median ${C[$w,raw-file]:-})
        say "$(printf "$f" "$w" "${CUNIT[$w]}" "$(fmt "$o")" "$(fmt "$q")" \
               "$(fmt "$rw")" "$(ratio "$o" "$q")" "$(ratio "$o" "$rw")")"
    done

    say ""
    say "Every run, in order (throughput | server CPU per request):"
    for w in "${results[@]}"; do
        for s in $SERVERS; do
            say "  $(printf "%-25s %-9s" "$w" "$s")${R[$w,$s]:-} |${C[$w,$s]:-}"
        done
    done
}

#----------------------------------------------------------------------
# Open time, memory, check.

big=$dir/big-1t
full=$dir/full-16g

# The 1 TiB sparse image, and a 16 GiB image whose every cluster is
# allocated: 4 KiB written at the start of each cluster through our
# server (QED counts the cluster allocated; the host file is sparse).
# raw-file gets sparse raw files of the same sizes.
make_open_images ()
{
    local out
    if [ ! -f "$big.qed" ]; then
        mkimg ours "$big.qed" 1T && mkimg raw-file "$big.raw" 1T || return 1
    fi
    if [ ! -f "$full.qed" ]; then
        mkimg ours "$full.qed" 16G && mkimg raw-file "$full.raw" 16G ||
            return 1
        start_server ours "$full.qed" || return 1
        out=$("$here/fio-nbd.sh" "$uri" "write:$((CLUSTER_BYTES - 4096))" \
                  4K 16 1 16G 3600) || { stop_server; return 1; }
        stop_server
        log "allocated every cluster of $full.qed (${out%% *} writes/s)"
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

# ensure_built PROGRAM: make the build tree's PROGRAM (e.g.
# tests/nbd/qedcheck, a check program) if it is not there.
ensure_built ()
{
    [ -x "$BUILD_DIR/$1" ] ||
        make -C "$BUILD_DIR/$(dirname "$1")" "$(basename "$1")" >/dev/null ||
        die "cannot build $BUILD_DIR/$1"
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
    say "Memory under load: fio randrw 4K, 4 connections x qd16, over the whole 1 TiB"
    say "  of a new sparse image for ${MEM_RT}s (most writes allocate); VmHWM = peak RSS:"
    for s in $SERVERS; do
        case $s in raw-file) img=$dir/mem.raw ;; *) img=$dir/mem.qed ;; esac
        mkimg "$s" "$img" 1T || continue
        start_server "$s" "$img" || continue
        out=$("$here/fio-nbd.sh" "$uri" randrw 4K 16 4 1T "$MEM_RT" --time_based)
        set -- $(mem_of "$server_pid")
        stop_server
        line="  $(printf "%-9s" "$s") VmRSS at end $1 MiB, VmHWM $2 MiB, $(fmt "${out%% *}") IOPS, image $(du -m "$img" | cut -f1) MiB on disk"
        if [ "$s" = ours ]; then
            MEM_HWM=$2
            if ge 64 "$2"; then pass=PASS; else pass=FAIL; fi
            line="$line; target <= 64 MiB: $pass"
        fi
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
say "Images in $dir ($(stat -f -c %T "$dir")), cluster size $CLUSTER_SIZE; plugin $PLUGIN"
say "CPU busy before the start (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"
say ""

warm_up
has "$SECTIONS" fio && run_fio_section
has "$SECTIONS" copy && run_copy_section
[ ${#results[@]} -gt 0 ] && print_tables
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
fi

say ""
say "CPU busy after the end (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"

for s in ours qemu-nbd raw-file; do
    if [ -s "$dir/$s.log" ]; then
        log "$s wrote to its log ($dir/$s.log), most frequent lines:"
        sort "$dir/$s.log" | uniq -c | sort -rn | head -n 5 >&2
    fi
done
cp "$report" "$OUT" && log "report written to $OUT"
