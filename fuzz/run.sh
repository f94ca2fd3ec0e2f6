#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another (not in parallel), starting
# from fuzz/seeds/<target> plus whatever fuzz/corpus/<target> already holds, and prints one
# summary line per target (executions, seconds, corpus size, crash or not).
#
#   fuzz/run.sh [seconds per target, default 180] [targets...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -u
cd "$(dirname "$0")"
secs=${1:-180}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(client_codec handshake_json ws_path master_link peer_link cli_link auth_handshake config_files config_struct)
fi
mkdir -p logs
cargo +nightly fuzz build -O "${targets[@]/#/}" >/dev/null 2>&1 || cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 \
    >"logs/$t.log" 2>&1
  rc=$?
  done_line=$(grep -E '^Done [0-9]+ runs' "logs/$t.log" | tail -1)
  corpus=$(ls "corpus/$t" | wc -l)
  crash=$(grep -E 'SUMMARY|panicked|Test unit written' "logs/$t.log" | head -2 | tr '\n' ' ')
  echo "$t: rc=$rc ${done_line:-no Done line} corpus=$corpus ${crash:-no crash}"
done
