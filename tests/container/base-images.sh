#!/usr/bin/env bash
# Makes the base images the Dockerfile names, debian:bookworm and debian:bookworm-slim, without
# a registry: debootstrap (minbase, like the official images) from the Debian mirror apt already
# uses, the official images' apt/dpkg settings, imported as docker.io/library/debian:TAG.
# The rootfs tarballs are cached and remade when older than TROLLPROXY_BASE_MAX_AGE_DAYS (30).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need_packages podman runc debootstrap debian-archive-keyring
containers_env
MAX_AGE_DAYS=${TROLLPROXY_BASE_MAX_AGE_DAYS:-30}
ROOTFS=$CACHE/rootfs

# The mirrors apt uses (one-line or deb822 sources), else deb.debian.org.
host_uris() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && cat "$f"
  done | sed -n -e 's/^URIs:[[:space:]]*//p' \
      -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]*\).*/\2/p' | tr ' ' '\n'
}
MIRROR=${TROLLPROXY_DEBIAN_MIRROR:-$(host_uris | grep -E '/debian/?$' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=$(host_uris | grep -E '/debian-security/?$' | head -1 || true)
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

# What the official images (debuerreotype) set: no .deb or package cache kept after apt runs,
# no translations, no suggested packages kept, unsafe-io for dpkg.
minimize() {
  local r=$1
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
  echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'force-unsafe-io' >"$r/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<CONF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CONF
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
    "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/root/.bash_history
  : >"$r/etc/resolv.conf"
  echo localhost >"$r/etc/hostname"
}

# The slim variant: the same rootfs without documentation, man pages and translations, and
# dpkg told to leave them out of packages installed later (debuerreotype-slimify).
slimify() {
  local r=$1
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CONF
  find "$r/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/groff/* "$r"/usr/share/info/* \
    "$r"/usr/share/lintian/* "$r"/usr/share/linda/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

make_rootfs() {
  local tmp=$CACHE/rootfs.tmp start=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp" "$ROOTFS"
  log "debootstrap --variant=minbase bookworm from $MIRROR (cold cache)"
  debootstrap --variant=minbase bookworm "$tmp/bookworm" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log"; fail "debootstrap"; }
  minimize "$tmp/bookworm"
  tar --numeric-owner -C "$tmp/bookworm" -cf "$tmp/bookworm.tar" .
  slimify "$tmp/bookworm"
  tar --numeric-owner -C "$tmp/bookworm" -cf "$tmp/bookworm-slim.tar" .
  mv "$tmp/bookworm.tar" "$tmp/bookworm-slim.tar" "$ROOTFS/"
  rm -rf "$tmp"
  log "rootfs made in $((SECONDS - start)) s"
}

stale=$(find "$ROOTFS" -maxdepth 1 -name 'bookworm*.tar' -mtime +"$MAX_AGE_DAYS" 2>/dev/null || true)
if [ ! -f "$ROOTFS/bookworm.tar" ] || [ ! -f "$ROOTFS/bookworm-slim.tar" ] || [ -n "$stale" ]; then
  make_rootfs
fi
for tag in bookworm bookworm-slim; do
  image=docker.io/library/debian:$tag
  # Remade from the tarball when that is newer than the image (labelled with its mtime).
  made=$(stat -c %Y "$ROOTFS/$tag.tar")
  if podman image exists "$image" &&
    [ "$(podman image inspect --format '{{index .Labels "trollproxy.rootfs"}}' "$image")" = "$made" ]; then
    continue
  fi
  podman import --quiet --change 'CMD ["bash"]' --change "LABEL trollproxy.rootfs=$made" \
    "$ROOTFS/$tag.tar" "$image" >/dev/null
  log "imported $image ($(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B)"
done
podman run --rm --network host --pull=never debian:bookworm-slim true ||
  skip "podman cannot run a container here"
