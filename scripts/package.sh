#!/usr/bin/env bash
# Builds the Debian package leasefs_<version>_<arch>.deb with dpkg-deb (no extra tools):
#   /usr/bin/leasefs, /usr/sbin/mount.leasefs, the systemd units, the man page, shell
#   completions, /etc/leasefs/config.json (0600, a conffile) and /etc/leasefs/secrets/ (0700),
#   which pass leasefs's own permission checks, the state directory /var/lib/leasefs, the log
#   directory /var/log/leasefs (0700) and the documentation in /usr/share/doc/leasefs.
# Usage: scripts/package.sh [--bin PATH] [--out DIR] [--fast]
#   --bin PATH  package this binary instead of building target/release/leasefs
#   --fast      no compression (for tests)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="" out="target/debian" fast=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) fast=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  echo "package.sh: cargo build --release" >&2
  cargo build --release --quiet
  bin=target/release/leasefs
fi
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb is needed (Debian's dpkg)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$bin" "$root/usr/bin/leasefs"
[ "$fast" = 1 ] || strip --strip-unneeded "$root/usr/bin/leasefs" 2>/dev/null || true
install -d -m 0755 "$root/usr/sbin"
ln -s ../bin/leasefs "$root/usr/sbin/mount.leasefs"
install -D -m 0644 systemd/leasefs.service "$root/lib/systemd/system/leasefs.service"
install -D -m 0644 systemd/leasefs@.service "$root/lib/systemd/system/leasefs@.service"
install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/doc/leasefs"
"$bin" manpage | gzip -9n > "$root/usr/share/man/man1/leasefs.1.gz"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/leasefs"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_leasefs"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/leasefs.fish"
install -m 0644 README.md "$root/usr/share/doc/leasefs/README.md"
cp -r docs "$root/usr/share/doc/leasefs/docs"
chmod -R u=rwX,go=rX "$root/usr/share/doc/leasefs"

# Configuration: private, owned by root, as leasefs's own checks require.
install -d -m 0700 "$root/etc/leasefs" "$root/etc/leasefs/secrets"
cat > "$root/etc/leasefs/config.json" <<'JSON'
{
  "sources": [{"type": "local", "prefix": "/", "path": "/etc/leasefs/secrets"}],
  "state_dir": "/var/lib/leasefs",
  "audit_log": "/var/log/leasefs/audit.jsonl",
  "allow_other": true
}
JSON
chmod 0600 "$root/etc/leasefs/config.json"
install -d -m 0700 "$root/var/lib/leasefs"
# The audit log's and mount.leasefs's log=FILE directory (systemd's LogsDirectory= makes it too).
install -d -m 0700 "$root/var/log/leasefs"

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: leasefs
Version: $version
Architecture: $arch
Maintainer: leasefs developers <leasefs@localhost>
Depends: libc6, fuse3
Installed-Size: $size
Section: admin
Priority: optional
Description: FUSE filesystem that exposes secrets as files
 Listing is metadata-only; a static secret's bytes are fetched when it is
 opened; opening a dynamic secret issues a fresh short-lived credential
 (AWS STS keys, a PostgreSQL role, a signed token, a script's output) that
 is zeroized and revoked at its issuer when its lease expires.
EOF
echo "/etc/leasefs/config.json" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stop the service, and on removal every other daemon of this package's binary (started by
# `mount -t leasefs` or fstab): each revokes its live leases and unmounts before the binary goes.
set -e
if [ -d /run/systemd/system ]; then
  systemctl stop leasefs.service 'leasefs@*.service' >/dev/null 2>&1 || true
fi
case "$1" in
  remove|deconfigure) ;;
  *) exit 0 ;;
esac
daemons() {
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/leasefs ] || continue
    [ "$(cat "$p/comm" 2>/dev/null)" = leasefs-guard ] && continue
    echo "${p#/proc/}"
  done
}
pids=$(daemons)
[ -n "$pids" ] || exit 0
echo "leasefs: stopping $(echo $pids | wc -w) leasefs daemon(s) (revoking their leases, unmounting)" >&2
kill -TERM $pids 2>/dev/null || true
# As long as systemd would wait (TimeoutStopSec=90s), then killed.
i=0
while [ -n "$(daemons)" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
left=$(daemons)
if [ -n "$left" ]; then
  echo "leasefs: killing $left (still running after 90 s)" >&2
  kill -KILL $left 2>/dev/null || true
fi
# A mount whose daemon had to be killed is dead: detach it.
awk '$1 == "leasefs" && $3 ~ /^fuse/ {print $2}' /proc/mounts | while read -r m; do
  m=$(printf '%b' "$m")
  stat "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
done
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/leasefs /var/log/leasefs
  # What `systemctl enable leasefs` (or leasefs@NAME) linked.
  rm -f /etc/systemd/system/*.wants/leasefs.service /etc/systemd/system/*.wants/leasefs@*.service
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/leasefs_${version}_${arch}.deb"
comp=(-Zxz)
[ "$fast" = 1 ] && comp=(-Znone)
dpkg-deb --root-owner-group "${comp[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
