#!/usr/bin/env bash
# nbdkit-qed benchmarks: what the size of an image costs.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   bench/scale.sh [PLUGIN]
#
# 1. Open, first read and close of large images, sparse (nothing
#    allocated) and fully allocated (every cluster of the virtual disk
#    mapped), with the peak RSS of each, for:
#      the engine   in-process (bench/qed-open): qed_image_open and
#                   enable writes, a 4 KiB read in the middle of the
#                   disk, close;
#      each server  of SERVERS [ours qemu-nbd]: from its start until a
#                   client has connected (nbdkit and qemu-nbd open the
#                   image before they listen), the first 4 KiB read in
#                   the middle of the disk, and from SIGTERM until it
#                   has exited (close: flush, clean the image), timed
#                   by a client in Python (nbdsh's libnbd module);
#                   VmHWM of the server after the read.
#    RUNS rounds, servers interleaved, page cache dropped before each
#    open (as root); medians, and the first of each in the engine.
#    The allocated images are made by bench/qed-allocated: the tables
#    are written, the data is a hole of the file, so that a 1 TiB image
#    with all of its clusters allocated costs 128 MiB of disk.
# 2. Whether a request costs more on a larger image: random 4 KiB
#    reads, one in flight, for RT seconds over the whole of an
#    allocated LAT_SMALL and an allocated LAT_LARGE image (CLUSTER_SIZE
#    clusters), interleaved in the same run: IOPS, p50 and p99 latency,
#    and the ratios large/small.  The data read is a hole of the host
#    file (zeros, no disk I/O); what grows with the size is the L2
#    tables the lookups need (128 MiB for 1 TiB of 64 KiB clusters:
#    more than the default cache), which are read from the disk.
#
# Environment, besides PLUGIN, BUILD_DIR, BENCH_DIR, DROP_CACHES, RT
# and CLUSTER_SIZE of bench/common.sh:
#   SCALE_SIZES  the images of part 1, SIZE:CLUSTER_SIZE:sparse or
#                SIZE:CLUSTER_SIZE:allocated [64T:64K:sparse
#                1T:64K:allocated 256G:4K:sparse 256G:4K:allocated].
#                QED's tables address at most 256 GiB with 4 KiB
#                clusters (table size 16: 8192 entries per table), so
#                that is the largest image there is with 4 KiB clusters;
#                its allocated form has 2^26 clusters and 512 MiB of L2
#                tables.
#   SECTIONS     any of: open latency [both]
#   SERVERS      any of: ours qemu-nbd raw-file [ours qemu-nbd]
#                (raw-file: a sparse raw file of the same size, up to
#                the file system's largest file)
#   RUNS         rounds [3]
#   LAT_SMALL, LAT_LARGE  the images of part 2 [1G, 1T]
#   OUT          where the report is also written
#                [bench/results-scale.txt]
#
# Needs what bench.sh needs, and nbdsh (its Python module).  About 5
# minutes with the defaults on an idle machine with a disk of 1 GB/s.

# Lists of servers and a run's numbers are words in strings, split on
# purpose:
# shellcheck disable=SC2086

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/common.sh
source "$here/common.sh"

bench_setup "${1:-}"
SCALE_SIZES=${SCALE_SIZES:-64T:64K:sparse 1T:64K:allocated 256G:4K:sparse 256G:4K:allocated}
SECTIONS=${SECTIONS:-open latency}
SERVERS=${SERVERS:-ours qemu-nbd}
RUNS=${RUNS:-3}
LAT_SMALL=${LAT_SMALL:-1G}
LAT_LARGE=${LAT_LARGE:-1T}
OUT=${OUT:-$here/results-scale.txt}
command -v nbdsh >/dev/null || die "nbdsh is needed"
ensure_built bench/qed-open
ensure_built bench/qed-allocated
ensure_built tests/nbd/qedcheck

report=$dir/report.txt
: >"$report"
say () { echo "$*" | tee -a "$report"; }

# make_image SIZE CLUSTER KIND PATH SERVER: the image SERVER serves
# (raw-file: a sparse raw file; fails where the file system cannot
# hold a file of SIZE).  Prints what it made, for the report.
make_image ()
{
    local size=$1 cs=$2 kind=$3 path=$4 s=$5 ts out
    if [ "$s" = raw-file ]; then
        if ! truncate -s "$size" "$path" 2>/dev/null; then
            rm -f "$path"
            return 1
        fi
        echo "a sparse raw file"
        return 0
    fi
    if [ "$kind" = allocated ]; then
        "$BUILD_DIR/bench/qed-allocated" -c "$(numfmt --from=iec "$cs")" \
            "$(numfmt --from=iec "$size")" "$path" || return 1
        # Our check says whether it is consistent and all allocated.
        out=$("$BUILD_DIR/tests/nbd/qedcheck" "$path") ||
            die "qedcheck finds $path inconsistent: $out"
        return
    fi
    # The smallest table size that addresses SIZE, as qemu-img needs
    # to be told.
    for ts in 4 8 16; do
        qemu-img create -q -f qed -o cluster_size="$cs",table_size="$ts" \
            "$path" "$size" 2>/dev/null &&
            { echo "table size $ts, nothing allocated"; return 0; }
    done
    return 1
}

#----------------------------------------------------------------------
# 1. Open, first read, close.

# The client: connects as soon as the server listens, reads 4 KiB in
# the middle of the disk, reads the server's VmHWM, asks it to end
# (SIGTERM) and waits for it.  Prints "OPEN-MS READ-MS CLOSE-MS
# HWM-KIB".  The server's command is in SCALE_CMD, one word a line,
# its socket in SCALE_SOCK.
# shellcheck disable=SC2016
client_py='
import os, subprocess, time
import nbd

def now_ms():
    return time.monotonic() * 1000

sock = os.environ["SCALE_SOCK"]
t0 = now_ms()
server = subprocess.Popen(os.environ["SCALE_CMD"].split("\n"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    while True:
        if server.poll() is not None:
            raise SystemExit("the server ended before it served")
        if now_ms() - t0 > 600000:
            raise SystemExit("the server did not answer in 10 minutes")
        try:
            h = nbd.NBD()
            h.connect_unix(sock)
            break
        except nbd.Error:
            time.sleep(0.0005)
    t1 = now_ms()
    middle = h.get_size() // 2 // 4096 * 4096
    h.pread(4096, middle)
    t2 = now_ms()
    with open("/proc/%d/status" % server.pid) as f:
        hwm = [l.split()[1] for l in f if l.startswith("VmHWM:")][0]
    h.shutdown()
    del h
    t3 = now_ms()
finally:
    server.terminate()
    server.wait()
t4 = now_ms()
print("%.2f %.3f %.2f %s" % (t1 - t0, t2 - t1, t4 - t3, hwm))
'

# open_read_close SERVER IMAGE: prints the client's line.
open_read_close ()
{
    local s=$1 img=$2 sock=$dir/scale.sock
    rm -f "$sock"
    server_cmd "$s" "$img"
    case $s in
        qemu-nbd*) cmd=("${cmd[0]}" -k "$sock" "${cmd[@]:1}") ;;
        *)         cmd=("${cmd[0]}" -U "$sock" "${cmd[@]:1}") ;;
    esac
    drop_caches
    SCALE_SOCK=$sock SCALE_CMD=$(printf '%s\n' "${cmd[@]}") \
        nbdsh -c "$client_py"
}

# A row of the open table.
open_row ()
{
    say "$(printf '  %-10s %9s %9s %9s %9s  %s' "$@")"
}

run_open_section ()
{
    local spec size cs kind img s r line t what
    local -A O RD CL HW

    say "Open, first read (4 KiB in the middle of the disk) and close, in ms, and the"
    say "peak RSS (VmHWM) in MiB, on $(fs_of_dir);"
    say "medians of $RUNS, servers interleaved, $(caches_note)"
    say "(the engine: before its first open); lower is better.  A server's open is"
    say "from its start until a client has connected, its close from SIGTERM until"
    say "it has exited."
    for spec in $SCALE_SIZES; do
        IFS=: read -r size cs kind <<<"$spec"
        img=$dir/scale-$size-$cs-$kind
        say ""
        for t in qed raw; do
            case $t in
                qed) has "$SERVERS" ours || has "$SERVERS" qemu-nbd || continue ;;
                raw) has "$SERVERS" raw-file || continue ;;
            esac
            s=ours
            [ "$t" = raw ] && s=raw-file
            t0=$(now_ns)
            if what=$(make_image "$size" "$cs" "$kind" "$img.$t" "$s"); then
                say "$size, $cs clusters, $kind ($t): $what, $(du -m "$img.$t" | cut -f1) MiB on disk (made in $(( ($(now_ns) - t0) / 1000000 )) ms)"
            else
                say "$size, $cs clusters, $kind ($t): cannot be made here"
            fi
        done
        [ -f "$img.qed" ] || continue
        open_row who open read close "peak RSS"

        # The engine, in-process.
        drop_caches
        line=$("$BUILD_DIR/bench/qed-open" -n "$RUNS" "$img.qed") ||
            die "qed-open failed on $img.qed"
        # open-ms FIRST MEDIAN enable-ms MEDIAN close-ms MEDIAN rss-kib N
        # read-ms FIRST MEDIAN hwm-kib N
        set -- $line
        open_row engine "$(awk -v a="$3" -v b="$5" 'BEGIN { printf "%.3f", a + b }')" \
            "${12}" "$7" "$(awk -v k="${14}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "(open: qed_image_open + enable writes; first open $(awk -v a="$2" -v b="$5" 'BEGIN { printf "%.3f", a + b }'), first read ${11})"

        for s in $SERVERS; do O[$s]="" RD[$s]="" CL[$s]="" HW[$s]=""; done
        for ((r = 0; r < RUNS; r++)); do
            for s in $(order "$r"); do
                case $s in raw-file) t=$img.raw ;; *) t=$img.qed ;; esac
                [ -f "$t" ] || continue
                line=$(open_read_close "$s" "$t") ||
                    { log "$s on $t failed"; continue; }
                log "$spec run $((r + 1)) $s: $line (open, read, close ms; VmHWM KiB)"
                set -- $line
                O[$s]="${O[$s]} $1" RD[$s]="${RD[$s]} $2" CL[$s]="${CL[$s]} $3"
                HW[$s]="${HW[$s]} $(awk -v k="$4" 'BEGIN { printf "%.1f", k / 1024 }')"
            done
        done
        for s in $SERVERS; do
            [ -n "${O[$s]}" ] || continue
            open_row "$s" "$(median ${O[$s]})" "$(median ${RD[$s]})" \
                "$(median ${CL[$s]})" "$(median ${HW[$s]})"
        done
        rm -f "$img".*
    done
}

#----------------------------------------------------------------------
# 2. The cost of a request against the size.

run_latency_section ()
{
    local size s r out img
    local -A IO P5 P9

    for size in "$LAT_SMALL" "$LAT_LARGE"; do
        "$BUILD_DIR/bench/qed-allocated" -c "$CLUSTER_BYTES" \
            "$(numfmt --from=iec "$size")" "$dir/lat-$size.qed" >/dev/null ||
            die "cannot make the $size image"
    done
    for ((r = 0; r < RUNS; r++)); do
        for size in "$LAT_SMALL" "$LAT_LARGE"; do
            for s in $(order "$r"); do
                [ "$s" = raw-file ] && continue
                img=$dir/lat-$size.qed
                start_server "$s" "$img" || continue
                out=$("$here/fio-nbd.sh" "$uri" randread 4K 1 1 "$size" "$RT" \
                          --time_based)
                stop_server
                log "randread4k-qd1 $size run $((r + 1)) $s: ${out:-FAILED} (IOPS MiB/s IOs p50 p99 p99.9)"
                [ -n "$out" ] || continue
                set -- $out
                IO[$s,$size]="${IO[$s,$size]:-} $1"
                P5[$s,$size]="${P5[$s,$size]:-} $4"
                P9[$s,$size]="${P9[$s,$size]:-} $5"
            done
        done
    done
    rm -f "$dir"/lat-*.qed

    say ""
    say "Random 4 KiB reads, one in flight, over the whole of an allocated $LAT_SMALL and"
    say "$LAT_LARGE image ($CLUSTER_SIZE clusters), RT=${RT}s, medians of $RUNS runs interleaved,"
    say "on $(fs_of_dir);"
    say "$(caches_note).  The data is a hole of the host file; the L2"
    say "tables are read from the disk."
    say "large/small: the ratio of the $LAT_LARGE image's to the $LAT_SMALL image's (IOPS:"
    say "higher is better; latency: lower is better)."
    say "$(printf '%-9s %-7s %9s %9s %11s' server "" "$LAT_SMALL" "$LAT_LARGE" large/small)"
    for s in $SERVERS; do
        [ "$s" = raw-file ] && continue
        lat_row IO "$s" "$s" IOPS
        lat_row P5 "$s" "" "p50 us"
        lat_row P9 "$s" "" "p99 us"
    done
}

# lat_row ARRAY SERVER LABEL UNIT: a row of the table above.
lat_row ()
{
    local -n a=$1
    local small large
    small=$(median ${a[$2,$LAT_SMALL]:-})
    large=$(median ${a[$2,$LAT_LARGE]:-})
    say "$(printf '%-9s %-7s %9s %9s %11s' "$3" "$4" "$(fmt "$small")" \
        "$(fmt "$large")" "$(ratio "$large" "$small")")"
}

#----------------------------------------------------------------------

say "nbdkit-qed scale benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), source $(git -C "$srcdir" describe --always --dirty 2>/dev/null || echo '?')"
say "$(uname -sr), $(nproc) CPUs; $(nbdkit --version | head -n1), $(qemu-nbd --version | head -n1)"
say "Images in $dir: $(fs_of_dir); plugin $PLUGIN"
say "CPU busy before the start (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"
say ""
has "$SECTIONS" open && run_open_section
has "$SECTIONS" latency && run_latency_section
say ""
say "CPU busy after the end (others' load): $(check_quiet)%; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cp "$report" "$OUT" && log "report written to $OUT"
