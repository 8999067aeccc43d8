#!/usr/bin/env bash
# nbdkit-qed benchmark: qed-img against qemu-img doing the same work on
# one large, half-allocated image, on the machine's disk.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/qed-img.sh [BUILD_DIR]
#   BUILD_DIR  the build tree with qed-img/qed-img [build/ in the source]
# Environment:
#   BENCH_DIR  where the scratch directory goes [/var/tmp: the disk]
#   SIZE       the virtual disk [16G]
#   CHUNK      the image holds data in every other CHUNK [64M]: half
#              allocated, in few extents (deleting a file of many
#              extents costs seconds on a disk mounted with discard)
#   RUNS       interleaved rounds; medians are reported [3]
#   WORKS      which of the works below to time [check map convert commit]
#   OUT        the report is also written here [bench/results-qed-img.txt]
#
# The image is a QED overlay (64 KiB clusters) over an empty raw file
# of the same size.  Each round times, for each tool in turn (the order
# alternates), with the page cache dropped (when root) before each:
#   check          qed-img check       / qemu-img check
#   map            qed-img map --output=json / qemu-img map --output=json
#   convert        ... convert -O raw to a new file (sparse)
#   commit         ... commit -d into the raw base (emptied first)

set -u -o pipefail
export LC_ALL=C PATH=/usr/bin:/bin:$PATH

here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../build}" && pwd)
qed_img=$build/qed-img/qed-img
SIZE=${SIZE:-16G}
CHUNK=${CHUNK:-64M}
RUNS=${RUNS:-3}
OUT=${OUT:-$here/results-qed-img.txt}

log () { echo "bench: $*" >&2; }
die () { log "$*"; exit 1; }

[ -x "$qed_img" ] || die "$qed_img not found: build first"
for t in qemu-img qemu-io numfmt; do
    command -v $t >/dev/null || die "$t is missing (scripts/setup.sh)"
done
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/qedimgbench.XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1

drop_caches ()
{
    sync
    if [ "$(id -u)" = 0 ]; then
        echo 3 > /proc/sys/vm/drop_caches
    fi
}

size=$(numfmt --from=iec "$SIZE")
chunk=$(numfmt --from=iec "$CHUNK")
log "making a $SIZE overlay with data in every other $CHUNK in $dir"
truncate -s "$size" base.raw
qemu-img create -q -f qed -b base.raw -F raw disk.qed
writes=()
for (( off = 0; off < size; off += 2 * chunk )); do
    writes+=(-c "write -P 0x5a $off $chunk")
done
qemu-io -f qed "${writes[@]}" disk.qed > /dev/null || die "qemu-io failed"

# prepare_WORK and run_WORK_TOOL for each work.
prepare_check () { :; }
run_check_ours () { "$qed_img" check disk.qed; }
run_check_qemu () { qemu-img check -f qed disk.qed; }
prepare_map () { :; }
run_map_ours () { "$qed_img" map --output=json disk.qed; }
run_map_qemu () { qemu-img map --output=json -f qed disk.qed; }
prepare_convert () { rm -f out.raw; }
run_convert_ours () { "$qed_img" convert -O raw disk.qed out.raw; }
run_convert_qemu () { qemu-img convert -f qed -O raw disk.qed out.raw; }
prepare_commit () { truncate -s 0 base.raw; truncate -s "$size" base.raw; }
run_commit_ours () { "$qed_img" commit -d disk.qed; }
run_commit_qemu () { qemu-img commit -d -f qed disk.qed; }

read -r -a works <<< "${WORKS:-check map convert commit}"
declare -A times
for (( round = 1; round <= RUNS; round++ )); do
    for work in "${works[@]}"; do
        tools=(ours qemu)
        (( round % 2 == 0 )) && tools=(qemu ours)
        for tool in "${tools[@]}"; do
            "prepare_$work"
            drop_caches
            start=$(date +%s%N)
            "run_${work}_$tool" > "$dir/out.txt" 2>&1 ||
                [ "$work" = check ] ||
                die "$work ($tool) failed: $(cat "$dir/out.txt")"
            end=$(date +%s%N)
            t=$(( (end - start) / 1000000 ))
            times[$work,$tool]="${times[$work,$tool]:-} $t"
            log "round $round: $work $tool: $t ms"
        done
    done
done

median ()
{
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 }
        END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

{
    echo "qed-img against qemu-img ($(qemu-img --version | head -1))"
    echo "$SIZE QED overlay, 64 KiB clusters, data in every other $CHUNK," \
         "on $(findmnt -no FSTYPE -T "$dir") ($dir)"
    echo "medians of $RUNS interleaved rounds, page cache dropped" \
         "$( [ "$(id -u)" = 0 ] || echo "(not: not root) ")before each run"
    echo
    printf '%-10s %12s %12s %8s   %s\n' work "qed-img ms" "qemu-img ms" ratio runs
    for work in "${works[@]}"; do
        # shellcheck disable=SC2086
        o=$(median ${times[$work,ours]}) q=$(median ${times[$work,qemu]})
        printf '%-10s %12s %12s %8s   ours:%s qemu:%s\n' "$work" "$o" "$q" \
               "$(awk -v o="$o" -v q="$q" 'BEGIN { printf "%.2f", q ? o / q : 0 }')" \
               "${times[$work,ours]}" "${times[$work,qemu]}"
    done
} | tee "$OUT"
