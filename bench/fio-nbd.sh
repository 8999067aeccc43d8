#!/usr/bin/env bash
# nbdkit-qed benchmarks: one fio job over NBD (fio's nbd engine, libnbd).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   bench/fio-nbd.sh URI RW BS IODEPTH NUMJOBS SIZE RUNTIME [FIO-OPTION...]
#
# Prints one line, "IOPS MIBPS IOS P50 P99 P99.9" (reads and writes
# together, all jobs together; IOS is the number of reads and writes
# done, flushes not counted; P50 P99 P99.9 the percentiles of their
# completion latency in microseconds, from fio's histogram), or fails
# with fio's messages on stderr.  NUMJOBS jobs are NUMJOBS NBD
# connections.  RUNTIME caps the job; add
# --time_based to loop over SIZE for the whole RUNTIME.  Uses jq,
# not python3 (which may be an interpreter other than Debian's).

set -e -u -o pipefail

if [ $# -lt 7 ]; then
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 1
fi
uri=$1 rw=$2 bs=$3 qd=$4 nj=$5 size=$6 rt=$7
shift 7

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fio-nbd.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! fio --name=job --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --numjobs="$nj" --size="$size" --runtime="$rt" \
        --group_reporting --randrepeat=0 --norandommap \
        --unified_rw_reporting=both --percentile_list=50:99:99.9 \
        --output-format=json --output="$tmp/out.json" "$@" \
        >"$tmp/err" 2>&1; then
    echo "fio-nbd: fio failed: $rw bs=$bs on $uri" >&2
    head -n 20 "$tmp/err" >&2
    exit 1
fi

# fio may put notes before the JSON object.  "mixed" (of
# --unified_rw_reporting) counts reads and writes as one direction.
sed -n '/^{/,$p' "$tmp/out.json" |
    jq -r '.jobs[0] as $j |
           if $j.error != 0 then error("fio job error \($j.error)") else . end |
           $j.mixed as $m | ($m.clat_ns.percentile // {}) as $p |
           "\($m.iops) \($m.bw_bytes / 1048576) \($m.total_ios) \(($p["50.000000"] // 0) / 1000) \(($p["99.000000"] // 0) / 1000) \(($p["99.900000"] // 0) / 1000)"'
