#!/usr/bin/env bash
# nbdkit-qed: install what the build and the tests need, and build.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Used by scripts/serve.sh and scripts/test.sh, or on its own:
#
#   scripts/setup.sh
#
# On Debian (12 or later) it installs the missing packages with
# apt-get (through sudo when not root), then builds out of tree in
# $BUILD_DIR (default: build/ in the source tree) with
#   autoreconf -fi; configure $CONFIGURE_FLAGS; make -j$(nproc)
# Running it again only rebuilds what changed (and configures again
# when CONFIGURE_FLAGS changed).
#
# When sourced, it defines qed_setup, which does the same and leaves
# the source and build directories in $srcdir and $builddir.

# Everything the build, the tests, the demo, the benchmarks and the
# fuzzers use.  The one list of packages in the project.
qed_packages=(
    build-essential             # gcc, make
    autoconf
    automake
    libtool
    pkg-config
    nbdkit
    nbdkit-plugin-dev
    libnbd-dev                  # NBD backing files; the C tests
    libcurl4-openssl-dev        # HTTP(S) backing files
    libnbd-bin                  # nbdinfo, nbdcopy, nbdsh
    python3                     # the tests' helpers, make-malformed.py
    python3-libnbd              # the nbd module that nbdsh runs
    qemu-utils                  # qemu-img, qemu-io, qemu-nbd
    qemu-block-extra            # qemu-img's curl driver: http(s) backing files
    lighttpd                    # the web server of the HTTP tests
    lighttpd-mod-openssl        # its HTTPS
    fio
    jq
    strace                      # tests count system calls
    gnutls-bin                  # psktool, certtool: the TLS test
    valgrind
    perl                        # pod2man, podchecker
    clang
    libclang-rt-dev             # libFuzzer, for the fuzzers
    systemd                     # systemd-socket-activate, systemd-analyze
    debhelper                   # the Debian package (scripts/package.sh)
    lintian
)

qed_log ()
{
    echo "setup: $*" >&2
}

# Install the packages of qed_packages that are not installed.
qed_install_packages ()
{
    local missing=() p status sudo=()

    for p in "${qed_packages[@]}"; do
        status=$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null) || status=
        [ "$status" = "install ok installed" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        qed_log "all needed packages are installed"
        return 0
    fi

    if ! command -v apt-get >/dev/null 2>&1; then
        qed_log "missing packages: ${missing[*]}"
        qed_log "apt-get was not found: install them (or their equivalents) by hand"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            qed_log "missing packages: ${missing[*]}"
            qed_log "not root and sudo was not found: install them as root"
            return 1
        fi
        sudo=(sudo)
    fi

    qed_log "installing: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -q -y "${missing[@]}"
}

# Generate the build system when needed, configure, then make.
qed_build ()
{
    local jobs again flags=${CONFIGURE_FLAGS:-}

    jobs=$(nproc 2>/dev/null || echo 2)
    if [ ! -x "$srcdir/configure" ] || [ ! -f "$srcdir/Makefile.in" ]; then
        qed_log "autoreconf -fi in $srcdir"
        (cd "$srcdir" && autoreconf -fi) || return 1
    fi
    mkdir -p "$builddir" || return 1
    # Configure once, and again when the flags are not those of the
    # last configure (kept in configure-flags): scripts/test.sh adds
    # --enable-werror, which a build made by serve.sh lacks.  make does
    # not see flags change, so a build configured again starts clean.
    if [ ! -f "$builddir/Makefile" ] ||
       [ "$(cat "$builddir/configure-flags" 2>/dev/null)" != "$flags" ]; then
        again=
        [ -f "$builddir/Makefile" ] && again=yes
        qed_log "configure${flags:+ $flags} in $builddir"
        # shellcheck disable=SC2086 # CONFIGURE_FLAGS is a list of words
        (cd "$builddir" && "$srcdir/configure" -q $flags) || return 1
        if [ -n "$again" ]; then
            qed_log "make clean in $builddir: the configure flags changed"
            make -C "$builddir" --no-print-directory clean >/dev/null ||
                return 1
        fi
        echo "$flags" > "$builddir/configure-flags" || return 1
    fi
    qed_log "make -j$jobs in $builddir"
    make -C "$builddir" --no-print-directory -j"$jobs" || return 1
}

# Install, then build.  Sets srcdir and builddir.
qed_setup ()
{
    srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
    builddir=${BUILD_DIR:-$srcdir/build}
    mkdir -p "$builddir" && builddir=$(cd "$builddir" && pwd) || return 1
    qed_install_packages && qed_build
}

# Run directly rather than sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -e -u -o pipefail
    qed_setup
    qed_log "built in $builddir"
fi
