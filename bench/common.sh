# nbdkit-qed benchmarks: what bench.sh and profile.sh share.
# shellcheck shell=bash disable=SC2034,SC2154
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Sourced, not run.  Expects $here (the bench directory) and, when
# bench_setup is called, the settings below in the environment.
#
#   PLUGIN        the plugin [first argument, else build/plugin/.libs/
#                 nbdkit-qed-plugin.so in the source tree]
#   BUILD_DIR     build tree with bench/qed-open and tests/nbd/
#                 [the plugin's ../..]
#   BENCH_DIR     where the scratch directory is made (removed at the
#                 end unless KEEP=1) [/var/tmp: the machine's disk].
#                 BENCH_DIR=/dev/shm (tmpfs) measures the servers' CPU
#                 and concurrency without a disk.
#   DROP_CACHES   sync and drop the page cache (needs root) before
#                 each server start, so that no run reads what an
#                 earlier one left cached or flushes what it left dirty
#                 [yes]; "no" to keep the cache
#   ALLOC_IOS     most requests of a random allocating workload (all
#                 connections together; 0: no limit, the run lasts RT)
#                 [100000 on a file system mounted with "discard", else
#                 0].  There each deleted image costs about 0.3-0.7 ms
#                 per request that allocated (the discards of its
#                 extents), minutes for a run of RT seconds.
#   RT            seconds per fio run [8]
#   FILL_SIZE     bytes the read and in-place workloads cover, written
#                 first through the same server [1G] (of a 4 GiB image)
#   SEQ_ALLOC_SIZE   image size for sequential allocating writes: one
#                 pass, capped at RT [4G]
#   RAND_ALLOC_SIZE  image size for random allocating writes [256G];
#                 offsets are cluster-aligned, so nearly every write
#                 allocates a new cluster
#   CLUSTER_SIZE  cluster size of the QED images [64K]

set -u -o pipefail
export LC_ALL=C
# Debian's tools, not another python3 or qemu earlier on PATH.
export PATH=/usr/bin:/bin:$PATH

srcdir=$(cd "$here/.." && pwd)

log () { echo "bench: $*" >&2; }
die () { log "$*"; exit 1; }
has () { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
now_ns () { date +%s%N; }

# bench_setup [PLUGIN]: check the tools, make the scratch directory
# $dir, and remove it (and stop any server) on exit.
bench_setup ()
{
    local t avail

    PLUGIN=${PLUGIN:-${1:-$srcdir/build/plugin/.libs/nbdkit-qed-plugin.so}}
    [ -f "$PLUGIN" ] ||
        die "plugin not found: $PLUGIN (build it, or set PLUGIN)"
    PLUGIN=$(cd "$(dirname "$PLUGIN")" && pwd)/$(basename "$PLUGIN")
    BUILD_DIR=${BUILD_DIR:-$(cd "$(dirname "$PLUGIN")/../.." && pwd)}
    RT=${RT:-8}
    BENCH_DIR=${BENCH_DIR:-/var/tmp}
    DROP_CACHES=${DROP_CACHES:-yes}
    FILL_SIZE=${FILL_SIZE:-1G}
    SEQ_ALLOC_SIZE=${SEQ_ALLOC_SIZE:-4G}
    RAND_ALLOC_SIZE=${RAND_ALLOC_SIZE:-256G}
    CLUSTER_SIZE=${CLUSTER_SIZE:-64K}
    CLUSTER_BYTES=$(numfmt --from=iec "$CLUSTER_SIZE") || exit 1

    for t in nbdkit qemu-img qemu-nbd qemu-io fio nbdinfo nbdcopy jq make; do
        command -v "$t" >/dev/null || die "$t is needed"
    done
    fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"

    mkdir -p "$BENCH_DIR" || exit 1
    avail=$(df -P -k "$BENCH_DIR" | awk 'NR == 2 { print int($4 / 1048576) }')
    [ "$avail" -ge 12 ] ||
        log "warning: only $avail GiB free in $BENCH_DIR; about 12 are needed"
    dir=$(mktemp -d "$BENCH_DIR/nbdkit-qed-bench.XXXXXX") || exit 1
    if [ -z "${ALLOC_IOS:-}" ]; then
        ALLOC_IOS=0
        has "$(findmnt -no OPTIONS -T "$dir" | tr , ' ')" discard &&
            ALLOC_IOS=100000
    fi
    if [ "$DROP_CACHES" = yes ] && [ "$(id -u)" != 0 ]; then
        log "not root: the page cache cannot be dropped"
        DROP_CACHES=no
    fi
    server_pid=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup ()
{
    stop_server
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}

# The file system of the scratch directory, for the reports: "ext4 on
# /dev/vda", and ", mounted with discard" where it is.
fs_of_dir ()
{
    local fs src opts
    read -r fs src opts < <(findmnt -no FSTYPE,SOURCE,OPTIONS -T "$dir")
    if has "${opts//,/ }" discard; then
        echo "$fs on $src, mounted with discard"
    else
        echo "$fs on $src"
    fi
}

# Whether the page cache is dropped, for the reports.
caches_note ()
{
    if [ "$DROP_CACHES" = yes ]; then
        echo "page cache dropped before each server start"
    else
        echo "page cache NOT dropped"
    fi
}

# sync, then drop the page cache (DROP_CACHES): what a run reads comes
# from the disk, and what an earlier run left dirty is written now, not
# during the next run.
drop_caches ()
{
    sync
    [ "$DROP_CACHES" = yes ] && echo 3 >/proc/sys/vm/drop_caches
    return 0
}

# Touch memory once before measuring: on a VM whose memory has never
# been used, the first GiBs written cost much more (the hypervisor
# backs them on first touch), which would penalise whatever runs first.
warm_up ()
{
    local f=$dir/warm-up
    dd if=/dev/zero of="$f" bs=1M count="${WARM_UP_MIB:-8192}" 2>/dev/null
    rm -f "$f"
}

# Percentage of CPU time the machine spent busy over 2 seconds (with
# nothing of ours running, this is everyone else's load).
cpu_busy ()
{
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep 2
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y);
        busy = y[1] - x[1]; idle = y[2] - x[2];
        printf "%.0f\n", (busy + idle > 0 ? 100 * busy / (busy + idle) : 0) }'
}

# Say how busy the machine is; warn when something else is running.
check_quiet ()
{
    local busy
    busy=$(cpu_busy)
    if [ "$busy" -gt 10 ]; then
        log "warning: the machine is ${busy}% busy before we start; numbers will be"
        log "  disturbed.  Busiest processes:"
        ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -n 6 >&2
    fi
    echo "$busy"
}

#----------------------------------------------------------------------
# Servers.  SERVER is one of:
#   ours               nbdkit + PLUGIN on a QED image
#   qemu-nbd           qemu-nbd -f qed --cache=writeback --aio=threads
#   raw-file           nbdkit's file plugin on a raw file: the same NBD
#                      stack without a format, the ceiling
# and, bypassing the host's page cache (O_DIRECT), for bench.sh's
# direct section:
#   ours-direct        ours with cache=none
#   qemu-nbd-native    qemu-nbd --cache=none --aio=native (Linux AIO)
#   qemu-nbd-io_uring  qemu-nbd --cache=none --aio=io_uring
ALL_SERVERS="ours qemu-nbd raw-file ours-direct qemu-nbd-native qemu-nbd-io_uring"

# mkimg SERVER PATH SIZE: a fresh, empty image for SERVER.
mkimg ()
{
    rm -f "$2"
    case $1 in
        raw-file) truncate -s "$3" "$2" ;;
        *)        qemu-img create -q -f qed -o cluster_size="$CLUSTER_BYTES" \
                      "$2" "$3" ;;
    esac
}

# server_cmd SERVER IMAGE: sets the array cmd to the command serving
# IMAGE, without socket options (start_server adds -U / -k).  qemu-nbd
# takes at most -e connections: 64 for the 64-connection workload.
server_cmd ()
{
    case $1 in
        ours)     cmd=(nbdkit -f "$PLUGIN" "file=$2") ;;
        ours-direct)
                  cmd=(nbdkit -f "$PLUGIN" "file=$2" cache=none) ;;
        qemu-nbd) cmd=(qemu-nbd -f qed -t -e 64 --cache=writeback
                       --aio=threads "$2") ;;
        qemu-nbd-native)
                  cmd=(qemu-nbd -f qed -t -e 64 --cache=none --aio=native
                       "$2") ;;
        qemu-nbd-io_uring)
                  cmd=(qemu-nbd -f qed -t -e 64 --cache=none --aio=io_uring
                       "$2") ;;
        raw-file) cmd=(nbdkit -f file "$2") ;;
        *) die "unknown server $1 (known: $ALL_SERVERS)" ;;
    esac
}

# start_server SERVER IMAGE: drop the page cache, start the server in
# the background; sets server_pid and uri, and returns once the server
# answers.
start_server ()
{
    local s=$1 img=$2 i opt
    local sock=$dir/$s.sock

    rm -f "$sock"
    server_cmd "$s" "$img"
    case $s in
        qemu-nbd*) opt=-k ;;
        *)         opt=-U ;;
    esac
    drop_caches
    # wrap: an optional command prefix (profile.sh runs valgrind).
    ${wrap[@]+"${wrap[@]}"} "${cmd[0]}" "$opt" "$sock" "${cmd[@]:1}" \
        >>"$dir/$s.log" 2>&1 &
    server_pid=$!
    uri="nbd+unix:///?socket=$sock"
    for i in $(seq 400); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null
            server_pid=
            log "$s did not start on $img (see $dir/$s.log):"
            tail -n 5 "$dir/$s.log" >&2
            return 1
        fi
        [ -S "$sock" ] && nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    log "$s did not answer on $sock"
    stop_server
    return 1
}

stop_server ()
{
    [ -n "${server_pid:-}" ] || return 0
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=
    rm -f "$dir"/*.sock
}

# VmRSS and VmHWM of a process, in MiB: "RSS HWM".
mem_of ()
{
    awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 }
         END { printf "%.1f %.1f\n", r / 1024, h / 1024 }' "/proc/$1/status"
}

# CPU time (user + system, all threads) of a process, in clock ticks.
cpu_ticks ()
{
    # The command name (field 2) has no spaces for nbdkit and qemu-nbd.
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

#----------------------------------------------------------------------
# Statistics.

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

# The rotating order of the servers for run number $1 (of SERVERS, or
# of the servers after it).
order ()
{
    local run=$1
    shift
    # shellcheck disable=SC2206 # a list of words
    local -a list=(${@:-$SERVERS})
    local n=${#list[@]} i
    for ((i = 0; i < n; i++)); do
        echo "${list[((i + run) % n)]}"
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

#----------------------------------------------------------------------
# Workloads: fio jobs (fio's nbd engine, bench/fio-nbd.sh), and
# nbd-writer for the writes with FUA, which fio cannot send.

ALL_WORKLOADS="seqwrite1m-alloc seqread1m randread4k randwrite4k-inplace randwrite4k-alloc randread4k-4conn randrw4k-4conn randwrite64k-alloc-4conn alloc4k-fsync1 alloc4k-fua-qd16 journal64k randrw70-qd1 randrw4k-64conn"

# workload NAME: sets kind (fill: on an image whose first FILL_SIZE
# bytes the server wrote first; fresh: on a new image of vsize), the
# job (rw bs qd nj size, extra options; tool fio or nbd-writer) and the
# unit reported.  Random allocating jobs stop after ALLOC_IOS requests
# (see above).
workload ()
{
    extra=()
    tool=fio
    case $1 in
        seqwrite1m-alloc)
            kind=fresh vsize=$SEQ_ALLOC_SIZE
            rw=write bs=1M qd=8 nj=1 size=$SEQ_ALLOC_SIZE unit=MiB/s ;;
        seqread1m)
            kind=fill rw=read bs=1M qd=8 nj=1 size=$FILL_SIZE unit=MiB/s
            extra=(--time_based) ;;
        randread4k)
            kind=fill rw=randread bs=4K qd=16 nj=1 size=$FILL_SIZE unit=IOPS
            extra=(--time_based) ;;
        randwrite4k-inplace)
            kind=fill rw=randwrite bs=4K qd=16 nj=1 size=$FILL_SIZE unit=IOPS
            extra=(--time_based) ;;
        randwrite4k-alloc)
            kind=fresh vsize=$RAND_ALLOC_SIZE
            rw=randwrite bs=4K qd=16 nj=1 size=$RAND_ALLOC_SIZE unit=IOPS
            extra=(--blockalign="$CLUSTER_BYTES") ;;
        randread4k-4conn)
            kind=fill rw=randread bs=4K qd=16 nj=4 size=$FILL_SIZE unit=IOPS
            extra=(--time_based) ;;
        randrw4k-4conn)
            kind=fill rw=randrw bs=4K qd=16 nj=4 size=$FILL_SIZE unit=IOPS
            extra=(--time_based) ;;
        randwrite64k-alloc-4conn)
            kind=fresh vsize=$RAND_ALLOC_SIZE
            rw=randwrite bs=64K qd=16 nj=4 size=$RAND_ALLOC_SIZE unit=MiB/s
            extra=(--blockalign="$CLUSTER_BYTES") ;;
        # A guest that flushes after each write (a database's log, or
        # O_SYNC writes): random 4K writes that allocate, one at a time,
        # each followed by a flush (fio's --fsync=1 is an NBD_CMD_FLUSH).
        alloc4k-fsync1)
            kind=fresh vsize=$RAND_ALLOC_SIZE
            rw=randwrite bs=4K qd=1 nj=1 size=$RAND_ALLOC_SIZE unit=IOPS
            extra=(--blockalign="$CLUSTER_BYTES" --fsync=1) ;;
        # The same with FUA on each write instead (what a guest's
        # REQ_FUA writes become), 16 in flight: nbd-writer -F.
        alloc4k-fua-qd16)
            kind=fresh vsize=$RAND_ALLOC_SIZE tool=nbd-writer
            rw=randwrite bs=4K qd=16 nj=1 size=$RAND_ALLOC_SIZE unit=IOPS
            extra=(-F -a "$CLUSTER_BYTES") ;;
        # A journal: sequential 64K writes (allocating), 4 in flight, a
        # flush after every 16.
        journal64k)
            kind=fresh vsize=$SEQ_ALLOC_SIZE
            rw=write bs=64K qd=4 nj=1 size=$SEQ_ALLOC_SIZE unit=IOPS
            extra=(--fsync=16) ;;
        # Tail latency: 70% reads, 30% writes, one request at a time
        # (the percentiles are the point, see the latency table).
        randrw70-qd1)
            kind=fill rw=randrw bs=4K qd=1 nj=1 size=$FILL_SIZE unit=IOPS
            extra=(--rwmixread=70 --time_based) ;;
        # Many clients at once: 64 connections, 2 requests in flight on
        # each, random 4K reads and writes.
        randrw4k-64conn)
            kind=fill rw=randrw bs=4K qd=2 nj=64 size=$FILL_SIZE unit=IOPS
            extra=(--time_based) ;;
        *) die "unknown workload $1 (known: $ALL_WORKLOADS)" ;;
    esac
    if [ "$kind" = fresh ] && [ "$rw" = randwrite ] && [ "$ALLOC_IOS" -gt 0 ]; then
        case $tool in
            fio) extra+=(--number_ios=$((ALLOC_IOS / nj))) ;;
            *)   extra+=(-n "$ALLOC_IOS") ;;
        esac
    fi
}

# prepare_image SERVER: the image for the current workload (after
# workload NAME), in $img: new, or new and filled through SERVER.
prepare_image ()
{
    local s=$1 out
    img=$dir/$s.img
    if [ "$kind" = fresh ]; then
        mkimg "$s" "$img" "$vsize"
        return
    fi
    mkimg "$s" "$img" 4G || return 1
    start_server "$s" "$img" || return 1
    out=$("$here/fio-nbd.sh" "$uri" write 1M 8 1 "$FILL_SIZE" 600)
    stop_server
    [ -n "$out" ] || { log "filling $img through $s failed"; return 1; }
}

# run_workload: runs the current workload's job against the running
# server; prints "IOPS MIBPS IOS P50 P99 P99.9" (see fio-nbd.sh).
run_workload ()
{
    case $tool in
        fio) "$here/fio-nbd.sh" "$uri" "$rw" "$bs" "$qd" "$nj" "$size" "$RT" \
                 "${extra[@]}" ;;
        nbd-writer)
             "$BUILD_DIR/bench/nbd-writer" -b "$bs" -q "$qd" -s "$size" \
                 -t "$RT" "${extra[@]}" "$uri" ;;
    esac
}
