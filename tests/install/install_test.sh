#!/usr/bin/env bash
# Installs the build into a temporary DESTDIR and builds examples/embed_billing.cpp the way a user's
# service would: g++ plus `pkg-config libtrollproxy` alone, then runs it against the installed library.
set -euo pipefail

SRC=${TROLLPROXY_SOURCE_ROOT:?}
BUILD=${TROLLPROXY_BUILD_ROOT:?}
for tool in g++ pkg-config meson readelf; do
  command -v "$tool" >/dev/null || { echo "skip: $tool is not installed"; exit 77; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trollproxy-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
DEST=$TMP/dest
fail() { echo "FAIL: $*" >&2; exit 1; }

# --no-rebuild: meson test already built everything; --destdir keeps the real prefix untouched.
meson install -C "$BUILD" --no-rebuild --destdir "$DEST" --quiet >"$TMP/install.log" 2>&1 ||
  { cat "$TMP/install.log"; fail "meson install"; }

# Where the build put things: the configured prefix, libdir and includedir.
opt() {
  meson introspect "$BUILD" --buildoptions |
    python3 -c "import json,sys; print(next(o['value'] for o in json.load(sys.stdin) if o['name']=='$1'))"
}
PREFIX=$(opt prefix); LIBDIR=$(opt libdir); INCLUDEDIR=$(opt includedir)
case $LIBDIR in /*) ;; *) LIBDIR=$PREFIX/$LIBDIR ;; esac
case $INCLUDEDIR in /*) ;; *) INCLUDEDIR=$PREFIX/$INCLUDEDIR ;; esac
PCDIR=$DEST$LIBDIR/pkgconfig
[ -f "$PCDIR/libtrollproxy.pc" ] || fail "no libtrollproxy.pc in $PCDIR"
[ -e "$DEST$LIBDIR/libtrollproxy.so" ] || fail "no libtrollproxy.so in $DEST$LIBDIR"

# Every public header is installed, and nothing else.
(cd "$SRC/libtrollproxy/include/trollproxy" && ls) >"$TMP/want"
(cd "$DEST$INCLUDEDIR/trollproxy" && ls) >"$TMP/got" || fail "no $INCLUDEDIR/trollproxy"
diff -u "$TMP/want" "$TMP/got" >&2 || fail "installed headers differ from libtrollproxy/include/trollproxy (- missing, + extra)"

# Installed headers include only standard headers and each other: no third-party types.
while read -r file inc; do
  case $inc in
    '"trollproxy/'*'.hpp"') [ -f "$DEST$INCLUDEDIR/${inc//\"/}" ] || fail "$file includes $inc, which is not installed" ;;
    '<'*'.'*'>') fail "$file includes $inc (only standard C++ headers are allowed in public headers)" ;;
    '<'*'>') ;;
    *) fail "$file includes $inc" ;;
  esac
done < <(cd "$DEST$INCLUDEDIR" && grep -H '^#include' trollproxy/*.hpp | sed 's/:#include */ /')

# The installed library carries no path into the build tree.
if readelf -d "$DEST$LIBDIR/libtrollproxy.so" | grep -E 'RPATH|RUNPATH' | grep -F "$BUILD"; then
  fail "installed libtrollproxy.so has a RUNPATH into the build dir"
fi

# pkg-config as a user's build sees it: the sysroot prefixes the .pc file's paths with DESTDIR.
export PKG_CONFIG_PATH=$PCDIR PKG_CONFIG_SYSROOT_DIR=$DEST
version=$(pkg-config --modversion libtrollproxy) || fail "pkg-config cannot read libtrollproxy.pc"
want_version=$(meson introspect "$BUILD" --projectinfo | python3 -c "import json,sys; print(json.load(sys.stdin)['version'])")
[ "$version" = "$want_version" ] || fail "pkg-config version $version, project version $want_version"
cflags=$(pkg-config --cflags libtrollproxy)
libs=$(pkg-config --libs libtrollproxy)
echo "pkg-config libtrollproxy $version: cflags [$cflags] libs [$libs]"
[[ " $cflags " == *" -I$DEST$INCLUDEDIR "* ]] || fail "cflags do not name $DEST$INCLUDEDIR"
[[ " $libs " == *" -L$DEST$LIBDIR "* && " $libs " == *" -ltrollproxy "* ]] || fail "libs do not name -L$DEST$LIBDIR -ltrollproxy"
[[ "$cflags $libs" != *"$BUILD"* && "$cflags $libs" != *"$SRC/"* ]] || fail "pkg-config points into the source or build tree"

# Compile the example with nothing but those flags, from a copy outside the source tree.
cp "$SRC/examples/embed_billing.cpp" "$TMP/example.cpp"
# shellcheck disable=SC2086
g++ -std=c++20 -Wall -Wextra -Werror "$TMP/example.cpp" -o "$TMP/example" $cflags $libs ||
  fail "the example does not compile against the installed library"

# Run it against the installed library (not the build dir's copy).
export LD_LIBRARY_PATH=$DEST$LIBDIR
loaded=$(ldd "$TMP/example" | grep libtrollproxy || true)
echo "$loaded"
[[ $loaded == *" => $DEST$LIBDIR/libtrollproxy.so"* ]] || fail "the example does not load the installed library"
(cd "$TMP" && ./example "$SRC/configs/example.json") || fail "the example failed against the installed library"
echo "PASS: installed, compiled with pkg-config alone, ran"
