#!/usr/bin/env bash
# nbdkit-qed: build the Debian package, nbdkit-plugin-qed, check it with
# lintian, install it and check what is installed.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   scripts/package.sh [--install]
#
# On Debian 12 (or later), as root or through sudo:
#  1. installs what is missing (scripts/setup.sh's list) with apt-get;
#  2. copies the source tree (the files git knows, as they are in the
#     work tree) to $BUILD_DIR/package/nbdkit-qed-VERSION and runs
#     dpkg-buildpackage -us -uc -b -jauto there; the suite runs at build
#     time unless DEB_BUILD_OPTIONS has nocheck (scripts/test.sh sets
#     it in CI, where the suite has just run);
#  3. runs lintian, which must report no error and no warning;
#  4. installs the package with apt-get and checks the installed files:
#     "nbdkit qed" loads the plugin from nbdkit's plugin directory,
#     qed-img runs (and reads a backing file over NBD through the
#     installed network module, which a local image does not load),
#     the man pages, the units and the service's user are there, and
#     the service's command line (from the installed unit
#     and /etc/default/nbdkit-qed), run as that user under
#     systemd-socket-activate, serves an image in /var/lib/nbdkit-qed;
#  5. purges the package again, unless --install: then it stays
#     installed.
# The .deb stays in $BUILD_DIR/package (default: build/package).

set -e -u -o pipefail

keep=
case ${1:-} in
    --install) keep=yes ;;
    '') ;;
    -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "package: unknown argument: $1 (see --help)" >&2; exit 1 ;;
esac

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
builddir=${BUILD_DIR:-$srcdir/build}
mkdir -p "$builddir" && builddir=$(cd "$builddir" && pwd)
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

log ()
{
    echo "package: $*" >&2
}
fail ()
{
    log "FAILED: $*"
    exit 1
}

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
# Another apt-get may hold the lock for a while: wait for it.
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive
     apt-get -q -y -o DPkg::Lock::Timeout=600)

#----------------------------------------------------------------------
# What the build needs: setup.sh's list, which has every Build-Depends.

qed_install_packages

# The two lists agree: every Build-Depends is in setup.sh's list, and
# every package there is a Build-Depends or one of these, which the
# package build does not need (debhelper brings autoconf, automake and
# libtool; build-essential is implied; lintian is this script's).
not_build_depends=(build-essential autoconf automake libtool valgrind
                   clang libclang-rt-dev lintian)
build_depends=$(sed -n '/^Build-Depends:/,/^[A-Z]/p' "$srcdir/debian/control" |
                sed -e '1s/^Build-Depends://' -e '/^#/d' -e '/^[A-Z]/d' |
                tr ',' '\n' |
                sed -n 's/^ *\([a-z0-9][a-z0-9.+-]*\).*/\1/p' |
                sed -e 's/^debhelper-compat$/debhelper/' \
                    -e 's/^dh-sequence-.*/debhelper/' | sort -u)
for p in $build_depends; do
    printf '%s\n' "${qed_packages[@]}" | grep -qx "$p" ||
        fail "debian/control Build-Depends $p, which scripts/setup.sh does not list"
done
for p in "${qed_packages[@]}"; do
    echo "$build_depends" | grep -qx "$p" ||
        printf '%s\n' "${not_build_depends[@]}" | grep -qx "$p" ||
        fail "scripts/setup.sh lists $p, which debian/control's Build-Depends lacks (add it there, with <!nocheck> if only the tests need it, or to not_build_depends in scripts/package.sh)"
done

version=$(sed -n 's/^AC_INIT(\[nbdkit-qed\], *\[\([^]]*\)\].*/\1/p' \
              "$srcdir/configure.ac")
[ -n "$version" ] || fail "no version in configure.ac"
deb_version=$(cd "$srcdir" && dpkg-parsechangelog -S Version)
[ "$deb_version" = "$version" ] ||
    fail "debian/changelog is at $deb_version, configure.ac at $version: add an entry (dch -v $version)"
arch=$(dpkg --print-architecture)

#----------------------------------------------------------------------
# Build, from a copy of the tree.

pkgdir=$builddir/package
tree=$pkgdir/nbdkit-qed-$version
rm -rf "$pkgdir"
mkdir -p "$tree"
if git -C "$srcdir" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$srcdir" &&
     git ls-files -z --cached --others --exclude-standard |
         while IFS= read -r -d '' f; do
             [ -e "$f" ] && printf '%s\0' "$f"
         done |
         tar --null -T - -cf -) | tar -xf - -C "$tree"
else
    # A release tarball: everything but builds.
    (cd "$srcdir" && tar --exclude=./build --exclude=./.git -cf - .) |
        tar -xf - -C "$tree"
fi

log "dpkg-buildpackage -us -uc -b in $tree" \
    "(DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-}; log: $pkgdir/build.log)"
if ! (cd "$tree" && dpkg-buildpackage -us -uc -b -jauto) > "$pkgdir/build.log" 2>&1
then
    tail -n 100 "$pkgdir/build.log"
    fail "dpkg-buildpackage (the whole log: $pkgdir/build.log)"
fi
deb=$pkgdir/nbdkit-plugin-qed_${version}_$arch.deb
changes=$pkgdir/nbdkit-qed_${version}_$arch.changes
[ -f "$deb" ] || fail "no $deb"
[ -f "$changes" ] || fail "no $changes"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

#----------------------------------------------------------------------
# lintian: no error, no warning.

log "lintian $changes"
if ! lintian --fail-on error,warning "$changes"; then
    fail "lintian found errors or warnings"
fi

#----------------------------------------------------------------------
# Install, and check what is installed.

log "installing $deb"
"${apt[@]}" install --reinstall "$deb" > "$pkgdir/install.log" 2>&1 || {
    cat "$pkgdir/install.log"
    fail "apt-get install $deb"
}
purge ()
{
    [ -z "$keep" ] || return 0
    log "purging nbdkit-plugin-qed"
    "${apt[@]}" purge nbdkit-plugin-qed > "$pkgdir/purge.log" 2>&1 || {
        cat "$pkgdir/purge.log"
        log "apt-get purge nbdkit-plugin-qed failed"
        return 1
    }
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qedpkg.XXXXXX")
sa_pid=
image=
finish ()
{
    local status=$?
    [ -z "$sa_pid" ] || { kill "$sa_pid" 2>/dev/null; wait "$sa_pid"; } || true
    [ -z "$image" ] || rm -f "$image"
    rm -rf "$tmp"
    purge || status=1
    exit $status
}
trap finish EXIT

plugindir=$(pkg-config --variable=plugindir nbdkit)
filterdir=$(pkg-config --variable=filterdir nbdkit)
# The network file layers' module, in $(pkglibdir) (files/Makefile.am).
netmodule=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/nbdkit-qed/qed-net.so
dpkg -L nbdkit-plugin-qed > "$tmp/files"
for f in "$plugindir/nbdkit-qed-plugin.so" \
         "$filterdir/nbdkit-qed-filter.so" \
         "$netmodule" \
         /usr/bin/qed-img \
         /usr/share/man/man1/nbdkit-qed-plugin.1.gz \
         /usr/share/man/man1/nbdkit-qed-filter.1.gz \
         /usr/share/man/man1/qed-img.1.gz \
         /lib/systemd/system/nbdkit-qed.socket \
         /lib/systemd/system/nbdkit-qed.service \
         /etc/default/nbdkit-qed \
         /usr/lib/sysusers.d/nbdkit-qed.conf \
         /usr/lib/tmpfiles.d/nbdkit-qed.conf; do
    grep -qx "$f" "$tmp/files" || fail "the package lacks $f"
    [ -e "$f" ] || fail "$f is not installed"
done
if grep '\.la$' "$tmp/files"; then
    fail "the package has a libtool archive"
fi

# The man pages are this version's (pod2man's --release), and rendered
# from UTF-8 (E<ge> in the pods is "≥", not "X").
for page in nbdkit-qed-plugin nbdkit-qed-filter qed-img; do
    th=$(zcat "/usr/share/man/man1/$page.1.gz" | grep -m1 '^\.TH ') ||
        fail "/usr/share/man/man1/$page.1.gz has no .TH line"
    case $th in
        *"nbdkit-qed-$version"*) ;;
        *) fail "/usr/share/man/man1/$page.1.gz is not of $version: $th" ;;
    esac
done
for pod in plugin/nbdkit-qed-plugin.pod filter/nbdkit-qed-filter.pod \
           qed-img/qed-img.pod; do
    grep -q 'E<ge>' "$srcdir/$pod" || continue
    page=/usr/share/man/man1/$(basename "$pod" .pod).1.gz
    if ! zcat "$page" | grep -q '≥'; then
        fail "$page lacks the \"≥\" of E<ge> in $pod (pod2man without --utf8?)"
    fi
done

# nbdkit loads the filter only if built against its exact version: the
# package depends on exactly that one.
nbdkit_version=$(pkg-config --modversion nbdkit)
depends=$(dpkg-query -W -f '${Depends}' nbdkit-plugin-qed)
log "Depends: $depends"
case ", $depends," in
    *", nbdkit (>= $nbdkit_version), nbdkit (<< "*) ;;
    *) fail "Depends lacks nbdkit (>= $nbdkit_version), nbdkit (<< ...), which the filter needs: $depends" ;;
esac
for lib in libnbd0 libcurl4; do
    case ", $depends," in
        *", $lib "*|*", $lib,"*) ;;
        *) fail "Depends lacks $lib (\${shlibs:Depends}): $depends" ;;
    esac
done

# The plugin, by its name, from nbdkit's plugin directory (not a build
# tree: the copy above is the only build this script made).
nbdkit qed --dump-plugin > "$tmp/dump"
cat "$tmp/dump"
grep -qx "path=$plugindir/nbdkit-qed-plugin.so" "$tmp/dump" ||
    fail "nbdkit qed does not load $plugindir/nbdkit-qed-plugin.so"
grep -qx "name=qed" "$tmp/dump" || fail "nbdkit qed --dump-plugin: no name=qed"
grep -qx "version=$version" "$tmp/dump" ||
    fail "nbdkit qed --dump-plugin: no version=$version"
[ "$(command -v qed-img)" = /usr/bin/qed-img ] || fail "qed-img is not /usr/bin/qed-img"
qed_img_version=$(qed-img --version) || fail "qed-img --version failed"
echo "$qed_img_version"
case $qed_img_version in
    *"$version"*) ;;
    *) fail "qed-img --version does not say $version: $qed_img_version" ;;
esac

# The filter, by its name, from nbdkit's filter directory, over the
# file plugin: it serves what qemu-img reads in the same image.
qed-img create -q "$tmp/filter.qed" 16M
qemu-io -f qed -c 'write -P 0x46 1M 1M' -c 'write -z 4M 64k' \
    "$tmp/filter.qed" > /dev/null ||
    fail "qemu-io could not write the filter's test image"
qemu-img convert -f qed -O raw "$tmp/filter.qed" "$tmp/filter-qemu.raw"
nbdkit -r -U - -v --filter=qed file file="$tmp/filter.qed" \
       --run 'nbdcopy "$uri" '"$tmp/filter-nbd.raw" 2> "$tmp/filter.log" ||
    { cat "$tmp/filter.log"; fail "nbdkit --filter=qed file: nbdcopy failed"; }
grep -F "$filterdir/nbdkit-qed-filter.so" "$tmp/filter.log" ||
    { cat "$tmp/filter.log"; fail "nbdkit --filter=qed did not load $filterdir/nbdkit-qed-filter.so"; }
cmp "$tmp/filter-qemu.raw" "$tmp/filter-nbd.raw" ||
    fail "nbdkit --filter=qed file and qemu-img convert read different data"
[ "$(dd if="$tmp/filter-nbd.raw" bs=1M skip=1 count=1 status=none | tr -d F | wc -c)" = 0 ] ||
    fail "nbdkit --filter=qed file: the second MiB is not the 'F' bytes written"
[ "$(stat -c %s "$tmp/filter-nbd.raw")" = $(( 16 * 1024 * 1024 )) ] ||
    fail "nbdkit --filter=qed file: the disk is not 16M: $(stat -c %s "$tmp/filter-nbd.raw") bytes"

# The installed network file layers: qed-img follows a backing file
# over NBD through the installed module (no QED_NET_MODULE), and the
# installed plugin serving a local image does not load it.
nbdkit -U "$tmp/base.sock" -P "$tmp/base.pid" memory 1M
qemu-io -f raw -c 'write -P 0x4e 0 64k' "nbd+unix:///?socket=$tmp/base.sock" \
    > /dev/null || fail "qemu-io could not write the NBD base"
env -u QED_NET_MODULE qed-img create -q -F raw \
    -b "nbd+unix:///?socket=$tmp/base.sock" "$tmp/net.qed" 1M ||
    fail "qed-img create -b nbd+unix://... failed"
env -u QED_NET_MODULE qed-img convert -O raw "$tmp/net.qed" "$tmp/net.raw" ||
    fail "qed-img convert of an image backed over NBD failed (module $netmodule)"
kill "$(cat "$tmp/base.pid")"
[ "$(head -c 65536 "$tmp/net.raw" | tr -d N | wc -c)" = 0 ] ||
    fail "qed-img convert did not read the NBD base's 'N' bytes"
nbdkit -U - qed "$tmp/filter.qed" --run 'cat /proc/$PPID/maps' > "$tmp/maps" ||
    fail "nbdkit qed $tmp/filter.qed --run: could not read the server's maps"
grep -qF "$plugindir/nbdkit-qed-plugin.so" "$tmp/maps" ||
    fail "the server's maps read have no $plugindir/nbdkit-qed-plugin.so"
if grep -E '/(libnbd|libcurl)\.so|/qed-net\.so' "$tmp/maps"; then
    fail "nbdkit qed serving a local image maps the network file layers"
fi

# The service's user and the directory of its images.
getent passwd nbdkit-qed || fail "no user nbdkit-qed"
[ "$(stat -c '%U:%G %a' /var/lib/nbdkit-qed)" = "nbdkit-qed:nbdkit-qed 750" ] ||
    fail "/var/lib/nbdkit-qed: $(stat -c '%U:%G %a' /var/lib/nbdkit-qed)"
if systemctl is-enabled nbdkit-qed.socket 2>/dev/null | grep -qx enabled; then
    fail "nbdkit-qed.socket is enabled by installing the package"
fi

# The installed service's command line, with the installed defaults,
# as its user: ExecStart's $NAME words are the variables' values split
# at spaces (tests/nbd/test-socket-activation.sh checks the same line
# in the source tree in detail).
unit=/lib/systemd/system/nbdkit-qed.service
exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
read -r -a words <<< "$exec_line"
declare -A vars=()
for a in $(sed -n 's/^Environment=//p' "$unit"); do vars[${a%%=*}]=${a#*=}; done
while IFS= read -r line; do
    case $line in ''|'#'*) continue ;; esac
    vars[${line%%=*}]=${line#*=}
done < /etc/default/nbdkit-qed
argv=()
for w in "${words[@]}"; do
    if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
        # shellcheck disable=SC2206 # split at spaces, as systemd
        argv+=(${vars[${BASH_REMATCH[1]}]-})
    else
        argv+=("$w")
    fi
done
argv=(setpriv --reuid=nbdkit-qed --regid=nbdkit-qed --init-groups
      "${argv[0]}" -v "${argv[@]:1}")
image=/var/lib/nbdkit-qed/package-check-$$.qed
setpriv --reuid=nbdkit-qed --regid=nbdkit-qed --init-groups \
    qed-img create -q "$image" 64M
sock=$tmp/nbdkit-qed.sock
log "serving: systemd-socket-activate -l $sock -- ${argv[*]}"
systemd-socket-activate -l "$sock" -- "${argv[@]}" 2> "$tmp/serve.log" &
sa_pid=$!
for (( i=0; i < 100; i++ )); do
    [ -S "$sock" ] && break
    sleep 0.1
done
export_uri="nbd+unix:///${image##*/}?socket=$sock"
nbdinfo --list "nbd+unix:///?socket=$sock" | grep -F "export=\"${image##*/}\"" ||
    { cat "$tmp/serve.log"; fail "the service does not list ${image##*/}"; }
qemu-io -f raw -c 'write -P 0x51 0 1M' -c 'flush' "$export_uri" ||
    { cat "$tmp/serve.log"; fail "writing through the service"; }
qemu-io -f raw -c 'read -P 0x51 0 1M' "$export_uri" ||
    { cat "$tmp/serve.log"; fail "reading through the service"; }
grep -q "nbdkit: debug: using socket activation" "$tmp/serve.log" ||
    { cat "$tmp/serve.log"; fail "nbdkit did not use the socket passed"; }
kill "$sa_pid"
status=0
wait "$sa_pid" || status=$?
sa_pid=
[ $status = 0 ] || { cat "$tmp/serve.log"; fail "nbdkit exited with status $status"; }
qed-img check "$image" || fail "qed-img check $image"
rm -f "$image"
image=

if [ -n "$keep" ]; then
    log "installed: $(dpkg-query -W nbdkit-plugin-qed)"
    log "serve with: systemctl enable --now nbdkit-qed.socket (README: Running as a service)"
else
    log "package checked: $deb"
fi
