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
[ -x /usr/sbin/sshd ]          || missing+=(openssh-server)
command -v runc        >/dev/null || missing+=(runc)
command -v dpkg-deb    >/dev/null || missing+=(dpkg)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  # Waits (up to 10 minutes) for another apt to release its lock rather than failing at once.
  ./scripts/apt-get.sh update -qq
  ./scripts/apt-get.sh install -y -qq "${missing[@]}" >/dev/null
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

# Every target runs even when one fails (--no-fail-fast); the output is shown as it comes and kept
# in a log, then summed up on one screen (scripts/test-summary.awk): per target passed / failed /
# ignored and time, the failed tests' names, the wall time, and last `N passed, N failed`.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
log="$target_dir/test.log"
# Cargo colours its own lines only on a terminal, and tee is not one.
if [ -t 1 ] && [ -z "${CARGO_TERM_COLOR:-}" ]; then export CARGO_TERM_COLOR=always; fi
echo "test.sh: cargo test --all-targets --no-fail-fast $* (log: $log)"
started=$SECONDS
set +e
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk -v status="$status" -v wall="$SECONDS" -v cargo_wall=$((SECONDS - started)) -v logfile="$log" \
  -f scripts/test-summary.awk "$log"
summary=$?
set -e
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$summary"
