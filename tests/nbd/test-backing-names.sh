#!/usr/bin/env bash
# nbdkit-qed tests: finding, probing and refusing backing files.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Relative and absolute names, a moved image with backing=, the raw
# bit, and the clear errors at start for a missing backing file, a
# loop, a chain that is too deep, a format we do not serve, and
# allow-backing=false.

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version

cd "$tmpdir"
mkdir -p images/sub

# reads_like IMAGE REFERENCE-RAW [ARGS...]
reads_like ()
{
    local img=$1 ref=$2; shift 2
    start_nbdkit srv "$plugin" "$img" "$@"
    nbdcopy "$uri_srv" out.raw
    cmp "$ref" out.raw
    stop_nbdkit srv
}

head -c $((4 << 20)) /dev/urandom > images/base.raw

# Relative to the image's directory, not to the current directory.
qemu-img create -q -f qed -b ../base.raw -F raw images/sub/rel.qed 4M
qemu-io -f qed -c 'write -P 0x5a 4k 4k' images/sub/rel.qed
qemu-img convert -O raw images/sub/rel.qed rel.raw
reads_like images/sub/rel.qed rel.raw

# Absolute.
qemu-img create -q -f qed -b "$tmpdir/images/base.raw" -F raw abs.qed 4M
reads_like abs.qed images/base.raw

# Moved: the name in the header no longer resolves.
mkdir moved
cp images/sub/rel.qed moved/
must_refuse_start "cannot open backing file" moved/rel.qed
must_refuse_start "No such file" moved/rel.qed
reads_like moved/rel.qed rel.raw backing=images/base.raw
# backing= is relative to where nbdkit was started, and must exist.
must_refuse_start "backing" moved/rel.qed backing=nosuch.raw

# A raw base that starts with QED's magic: with the raw bit the plugin
# never probes it; without the bit it would be taken for QED, which
# backing-format=raw overrides.
{ printf 'QED\0'; head -c $((1 << 20)) /dev/urandom; } > fake.raw
truncate -s 4M fake.raw
qemu-img create -q -f qed -b fake.raw -F raw rawbit.qed 4M
reads_like rawbit.qed fake.raw
qemu-img create -q -f qed -b fake.raw -F raw noprobe.qed 4M
printf '\001' | dd of=noprobe.qed bs=1 seek=16 conv=notrunc   # only 0x1
must_refuse_start "fake.raw" noprobe.qed
reads_like noprobe.qed fake.raw backing-format=raw

# A missing backing file is an error at start.
qemu-img create -q -f qed -u -b gone.raw -F raw missing.qed 4M
must_refuse_start "cannot open backing file" missing.qed
must_refuse_start "gone.raw" missing.qed

# Loops: an image backed by itself, and a -> b -> a.
qemu-img create -q -f qed self.qed 4M
qemu-img rebase -q -u -f qed -b self.qed -F qed self.qed
must_refuse_start "backing file loop" self.qed
qemu-img create -q -f qed a.qed 4M
qemu-img create -q -f qed -u -b a.qed -F qed b.qed 4M
qemu-img rebase -q -u -f qed -b b.qed -F qed a.qed
must_refuse_start "backing file loop" a.qed
must_refuse_start "backing file loop" b.qed

# Chains: 16 images (the top and 15 backing files) are served, longer
# chains are refused.
qemu-img create -q -f qed c0.qed 4M
qemu-io -f qed -c 'write -P 0x0c 0 64k' c0.qed
for i in $(seq 1 16); do
    qemu-img create -q -f qed -u -b c$((i - 1)).qed -F qed c$i.qed 4M
done
qemu-img convert -O raw c0.qed c0.raw
reads_like c15.qed c0.raw
must_refuse_start "backing chain is too deep" c16.qed

# Formats we do not serve are refused with their name, not read raw.
qemu-img create -q -f qcow2 q.qcow2 4M
qemu-img create -q -f qed -u -b q.qcow2 -F qcow2 onqcow2.qed 4M
must_refuse_start "qcow2" onqcow2.qed
qemu-img create -q -f vmdk v.vmdk 4M
qemu-img create -q -f qed -u -b v.vmdk -F vmdk onvmdk.qed 4M
must_refuse_start "vmdk" onvmdk.qed
must_refuse_start "backing-format must be raw or qed" onvmdk.qed \
    backing-format=vmdk

# allow-backing=false refuses any image with a backing file (and says
# which), and still serves images without one.
must_refuse_start "backing files are disabled" abs.qed allow-backing=false
must_refuse_start "$tmpdir/images/base.raw" abs.qed allow-backing=false
qemu-img convert -O raw c0.qed c0.raw
reads_like c0.qed c0.raw allow-backing=false
must_refuse_start "cannot be used with backing=" c0.qed allow-backing=false \
    backing=images/base.raw
must_refuse_start "the image has none" c0.qed backing=images/base.raw
