#!/usr/bin/env bash
# Builds leasefs in release mode, installs bindfs if missing, and runs the benchmark
# (benches/bench.py) as root. Results: docs/bench/latest.json and latest.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v bindfs >/dev/null || { ./scripts/apt-get.sh update -qq && ./scripts/apt-get.sh install -y -qq bindfs fuse3 >/dev/null; }
cargo build --release
exec python3 benches/bench.py "$@"
