#!/usr/bin/env bash
# apt-get, as root (sudo otherwise) and non-interactive, that waits up to 10 minutes for another
# apt or dpkg (unattended-upgrades on a fresh machine, a second agent) to release its lock instead
# of failing at once. `-o DPkg::Lock::Timeout` makes apt wait for the dpkg lock itself; apt-get
# update (apt 2.6) ignores it for /var/lib/apt/lists/lock, so a "Could not get lock" is retried
# here as well. Output as apt-get's (stdout on success, stderr on failure).
# Usage: scripts/apt-get.sh update -qq | scripts/apt-get.sh install -y -qq PACKAGE...
set -uo pipefail

wait_for=${LEASEFS_APT_LOCK_TIMEOUT:-600}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

deadline=$((SECONDS + wait_for))
said=
while :; do
  left=$((deadline - SECONDS))
  [ "$left" -gt 0 ] || left=0
  out=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$left" "$@" 2>&1)
  status=$?
  if [ "$status" = 0 ]; then
    [ -z "$out" ] || printf '%s\n' "$out"
    exit 0
  fi
  if ! grep -q 'Could not get lock' <<<"$out" || [ "$SECONDS" -ge "$deadline" ]; then
    printf '%s\n' "$out" >&2
    exit "$status"
  fi
  if [ -z "$said" ]; then
    echo "apt-get.sh: another apt holds its lock; waiting up to ${wait_for}s (apt-get $*)" >&2
    said=1
  fi
  sleep 5
done
