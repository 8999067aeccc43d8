#!/usr/bin/env bash
# nbdkit-qed tests: dir=, every QED image of a directory as an export.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdinfo --version
requires nbdsh --version
requires nbdcopy --version
requires qemu-img --version
requires qemu-io --version
requires jq --version
requires strace -V
requires test -x ./random-io

cd "$tmpdir"
mkdir d d/sub
qemu-img create -q -f qed d/a.qed 64M
qemu-img create -q -f qed -o cluster_size=4k d/b.qed 64M
head -c 1M /dev/urandom > base.raw
qemu-img create -q -f qed -b "$tmpdir/base.raw" -F raw d/c.qed 8M
qemu-img create -q -f qed -b "$tmpdir/base.raw" -F raw d/c2.qed 8M
ln d/a.qed d/a-link.qed                 # a second name of a.qed
ln -s a.qed d/sym.qed                   # links are not followed
echo 'not an image' > d/notes.txt
qemu-img create -q -f qed d/sub/deep.qed 1M
# broken.qed has the magic and a header that makes no sense.
head -c 4096 /dev/urandom > d/broken.qed
printf 'QED\0' | dd of=d/broken.qed conv=notrunc status=none
# dirty.qed was not closed cleanly: NEED_CHECK and a leaked cluster.
qemu-img create -q -f qed -o cluster_size=16k d/dirty.qed 1M
printf '\x02' | dd of=d/dirty.qed bs=1 seek=16 conv=notrunc status=none
truncate -s +16K d/dirty.qed
sha256sum d/dirty.qed > dirty.sum

start_nbdkit srv "$plugin" dir=d
sock=$tmpdir/srv.sock
uri_of () { echo "nbd+unix:///$1?socket=$sock"; }

# 1. The list: the QED images (a second name too), with descriptions,
# and nothing else; not broken.qed, whose header cannot be read.  Probing leaves dirty.qed alone: no repair, no
# write, NEED_CHECK still set.
nbdinfo --list --json "$uri_srv" > list
jq -r '.exports[]."export-name"' list | sort > names
cat names
printf '%s\n' a-link.qed a.qed b.qed c.qed c2.qed dirty.qed | diff - names
test "$(jq -r '.exports[] | select(."export-name" == "b.qed") | .description' list)" = \
     "QED image, virtual size 67108864 bytes, cluster size 4096, no backing file"
test "$(jq -r '.exports[] | select(."export-name" == "c.qed") | .description' list)" = \
     "QED image, virtual size 8388608 bytes, cluster size 65536, backing file $tmpdir/base.raw (raw)"
nbdinfo "$(uri_of dirty.qed)" > /dev/null
sha256sum -c dirty.sum
test "$(header_field d/dirty.qed 16 8)" = 2

# 2. The default export is refused, naming the way out.
must_fail nbdinfo "$uri_srv"
grep -F "no default export" "$tmpdir/srv.log"

# 3. Hostile names are refused before anything outside d/ is touched.
trace_server srv open,openat,stat,lstat,newfstatat,statx
for name in .. ../base.raw %2Fetc%2Fpasswd sub sub%2Fdeep.qed sym.qed \
            notes.txt nosuch.qed "$(printf 'x%.0s' {1..300})"; do
    must_fail nbdinfo "$(uri_of "$name")"
done
untrace_server srv
cat srv.strace
if grep -E '"(/etc|\.\.)[^"]*"|"[^"]*(/\.\.|sub/|base\.raw)[^"]*"' srv.strace
then
    echo "$0: a hostile export name reached a file outside the directory"
    exit 1
fi
grep -F "export '..': an export is named by a file name" "$tmpdir/srv.log"
grep -F "export 'sym.qed': no QED image of that name" "$tmpdir/srv.log"

# 4. A broken image fails its own connections, with its error; the
# others are served.
must_fail nbdinfo "$(uri_of broken.qed)"
grep -F "$tmpdir/d/broken.qed: " "$tmpdir/srv.log"
nbdinfo --size "$(uri_of a.qed)"
test "$(nbdinfo --size "$(uri_of c.qed)")" = 8388608

# 5. Several exports written at once, each from four connections
# (random-io), then compared byte for byte: no export sees another's
# writes.
pids=()
for e in a.qed b.qed; do
    qemu-img convert -U -f qed -O raw d/$e ref-$e.raw
    cs=$(qemu-img info -U --output=json d/$e | jq '."cluster-size"')
    "$abs_builddir/random-io" "$(uri_of $e)" ref-$e.raw $((64 << 20)) $cs 7 1500 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait $pid; done
for e in a.qed b.qed; do
    nbdcopy "$(uri_of $e)" out-$e.raw
    cmp ref-$e.raw out-$e.raw
done

# 6. An image is open while connections use it and closed after the
# last: while a connection has written, QEMU cannot write the image
# (our lock), and a second name shares the open image; once it ends,
# the image is clean (NEED_CHECK cleared) and unlocked.
opened=$(grep -c "export 'a.qed': opened the image\|export 'a-link.qed': opened the image" srv.log || true)
nbdsh -u "$(uri_of a.qed)" -c "
import subprocess
h.pwrite(b'Q' * 65536, 60 << 20)        # allocates: NEED_CHECK set
with open('d/a.qed', 'rb') as f:
    f.seek(16)
    assert f.read(1)[0] & 2, 'NEED_CHECK not set'
r = subprocess.run(['qemu-io', '-f', 'qed', '-c', 'write 0 512', 'd/a.qed'])
assert r.returncode != 0, 'QEMU could write the served image'
h2 = nbd.NBD()
h2.connect_uri('$(uri_of a-link.qed)')
assert h2.pread(4, 60 << 20) == b'QQQQ'
h2.shutdown()
"
test "$(grep -c "export 'a.qed': opened the image\|export 'a-link.qed': opened the image" srv.log)" = $(( opened + 1 ))
for (( i=0; i < 50; i++ )); do
    [ "$(header_field d/a.qed 16 8)" = 0 ] && break
    sleep 0.1
done
test "$(header_field d/a.qed 16 8)" = 0
qemu-io -f qed -c 'read -P 0x51 60M 64k' -c 'write -P 0x52 0 512' d/a.qed |
    grep -F 'read 65536/65536'
# ... and opened again, with what QEMU wrote, by the next connection.
nbdsh -u "$(uri_of a.qed)" -c 'assert h.pread(512, 0) == b"R" * 512'

# Eight connections coming at once to one export open its image once
# (the others wait for the first to open it, then share it).
opened=$(grep -c "export 'b.qed': opened the image" srv.log || true)
pids=()
for i in 1 2 3 4 5 6 7 8; do
    nbdsh -u "$(uri_of b.qed)" \
          -c 'import time; assert len(h.pread(512, 0)) == 512; time.sleep(3)' &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait $pid; done
test "$(grep -c "export 'b.qed': opened the image" srv.log)" = $(( opened + 1 ))

# 7. A backing file that two exports share is opened once, read-only.
pid=$(server_pid srv)
nbdsh -u "$(uri_of c.qed)" -c "
import os
h2 = nbd.NBD()
h2.connect_uri('$(uri_of c2.qed)')
base = open('base.raw', 'rb').read(65536)
assert h.pread(65536, 0) == base and h2.pread(65536, 0) == base
fds = [fd for fd in os.listdir('/proc/$pid/fd')
       if os.readlink('/proc/$pid/fd/' + fd) == '$tmpdir/base.raw']
assert len(fds) == 1, fds
with open('/proc/$pid/fdinfo/' + fds[0]) as f:
    flags = [l.split()[1] for l in f if l.startswith('flags:')][0]
assert int(flags, 8) & 3 == 0, flags          # O_RDONLY
h2.shutdown()
"
stop_nbdkit srv
qemu_check_no_corruption d/a.qed
qemu_check_no_corruption d/b.qed

# 8. default-export= names the default export.
start_nbdkit def "$plugin" dir=d default-export=b.qed
test "$(nbdinfo --size "$uri_def")" = 67108864
stop_nbdkit def

# 9. What cannot work together is refused at start.
must_refuse_start "file= and dir= cannot be used together" \
    dir=d file=d/a.qed
must_refuse_start "dir= cannot be used with" dir=d snapshot=true
must_refuse_start "default-export= needs dir=" d/a.qed default-export=a.qed
