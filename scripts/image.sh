#!/usr/bin/env bash
# Builds the leasefs container image (localhost/leasefs:<version>) from Containerfile:
# a FROM-scratch image with the binary, the shared libraries it links (found with ldd) and a
# minimal /etc. Needs podman (or docker: IMAGE_TOOL=docker). No registry is contacted.
# --exec builds the `exec` target instead (localhost/leasefs:<version>-exec): the same plus a
# static busybox (/bin/sh and its applets, from the host's busybox-static) for exec issuers.
# Usage: scripts/image.sh [--bin PATH] [--tag NAME] [--exec]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="" tag="" target=leasefs
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --exec) target=exec; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/leasefs
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
suffix=""
[ "$target" = exec ] && suffix=-exec
tag=${tag:-localhost/leasefs:$version$suffix}
tool=${IMAGE_TOOL:-podman}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
install -D -m 0755 "$bin" "$root/usr/bin/leasefs"
strip --strip-unneeded "$root/usr/bin/leasefs" 2>/dev/null || true
# The shared libraries the binary links, at the paths the loader looks for them.
ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | sort -u | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -d -m 0755 "$root/etc" "$root/tmp" "$root/secrets" "$root/var/lib/leasefs" "$root/run"
chmod 1777 "$root/tmp"
# CA certificates, for HTTPS to STS, OpenBao and other issuers.
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$ca" ]; then install -D -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"; break; fi
done
printf 'root:x:0:0:root:/root:/usr/bin/leasefs\nnobody:x:65534:65534:nobody:/nonexistent:/usr/bin/leasefs\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
# The exec target's shell: a static busybox (no shared libraries), root-owned as leasefs's
# trust checks require of the programs it runs, with a link for each applet in /bin.
install -d -m 0755 "$ctx/busybox"
if [ "$target" = exec ]; then
  bb=$(command -v busybox || true)
  [ -n "$bb" ] && { ldd "$bb" 2>&1 || true; } | grep -q 'not a dynamic executable' ||
    { echo "image.sh: --exec needs a static busybox (Debian: apt-get install busybox-static)" >&2; exit 1; }
  install -D -m 0755 "$bb" "$ctx/busybox/bin/busybox"
  for applet in $("$bb" --list); do
    [ -e "$ctx/busybox/bin/$applet" ] || ln -s busybox "$ctx/busybox/bin/$applet"
  done
fi
cp Containerfile "$ctx/Containerfile"
"$tool" build -q --target "$target" -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
echo "$tag"
