#!/usr/bin/env bash
# Installs what the test suite needs when missing — fuse3, attr, PostgreSQL, OpenBao, an STS API
# server (moto) — then runs every test. The servers are started by the tests themselves, on loopback.
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v getfattr    >/dev/null || missing+=(attr)
command -v runuser     >/dev/null || missing+=(util-linux)
command -v setpriv     >/dev/null || missing+=(util-linux)
command -v openssl     >/dev/null || missing+=(openssl)
command -v curl        >/dev/null || missing+=(curl)
command -v psql        >/dev/null || missing+=(postgresql-client)
command -v unshare     >/dev/null || missing+=(util-linux)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v kubectl     >/dev/null || missing+=(kubernetes-client)
command -v bindfs      >/dev/null || missing+=(bindfs)
[ -x /bin/busybox ]                || missing+=(busybox-static)
command -v podman      >/dev/null || missing+=(podman)
command -v nginx       >/dev/null || missing+=(nginx-light)
command -v ssh-keygen  >/dev/null || missing+=(openssh-client)
command -v runc        >/dev/null || missing+=(runc)
command -v dpkg-deb    >/dev/null || missing+=(dpkg)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "test.sh: /dev/fuse is missing; FUSE tests cannot run" >&2; exit 1; }
# Distributions ship /dev/fuse as 0666 (fusermount3 users need it); some containers create it 0600.
# A test runs the daemon as an unprivileged user, so give it the usual mode.
if [ "$(stat -c %a /dev/fuse)" != 666 ]; then as_root chmod 0666 /dev/fuse; fi

# Never leave a mount behind from an earlier interrupted run.
awk '$3 ~ /^fuse/ && $2 ~ /leasefs-test-/ {print $2}' /proc/mounts | while read -r m; do
  as_root umount -l "$m" || true
done

# PostgreSQL, OpenBao and moto (cached between runs under ~/.cache/leasefs-test).
eval "$(./scripts/backends.sh)"

# Servers the tests start die with their test binary (PR_SET_PDEATHSIG); this is a second net.
cleanup() { pkill -f 'leasefs-(pg|bao|moto)-' 2>/dev/null || true; }
trap cleanup EXIT

echo "test.sh: cargo test"
cargo test --all-targets "$@"
