#!/usr/bin/env bash
# Installs what the test suite needs (fuse3, attr, ...) when missing, then runs every test.
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v getfattr    >/dev/null || missing+=(attr)
command -v runuser     >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "test.sh: /dev/fuse is missing; FUSE tests cannot run" >&2; exit 1; }

# Never leave a mount behind from an earlier interrupted run.
awk '$3 ~ /^fuse/ && $2 ~ /leasefs-test-/ {print $2}' /proc/mounts | while read -r m; do
  as_root umount -l "$m" || true
done

echo "test.sh: cargo test"
cargo test --all-targets "$@"
