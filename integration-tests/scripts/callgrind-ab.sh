#!/bin/bash
# Instructions per request, A/B, with callgrind: noise-free where CPU seconds on this shared
# 2-core machine are not (docs/benchmarks.md, "A/B in instructions").
#
#   integration-tests/scripts/callgrind-ab.sh <dir A> <dir B> [requests] [rounds]
#
# Each dir holds a release `chat-demo` binary (e.g. copied from target/release of two
# commits). For each side in turn: the cluster (1 TCP frontend, 2 chat servers, rate limit
# off) runs under `valgrind --tool=callgrind --trace-children=yes`; the `fixed-client` binary
# (integration-tests/src/bin/fixed-client.rs, on kennel-client) logs in and sends `requests`
# requests one at a time to each echo route, then as many room-of-20 chat messages, zeroing the
# counters before and dumping them after each. Prints instructions per request (per chat
# message: its 20 pushes included) per server.
#
# IO_A / IO_B (`epoll`, the default, or `uring`) set the frontend's `io` key of each side, so
# one binary can be compared with itself on epoll and io_uring:
#   IO_B=uring integration-tests/scripts/callgrind-ab.sh target/release target/release
# KEEP=<dir> keeps the callgrind files there (<dir>/A, <dir>/B: one file per server and route,
# `cg.<pid>.out.<route number>`) for callgrind_annotate.
set -euo pipefail
io_a=${IO_A:-epoll}; io_b=${IO_B:-epoll}
a=$1; b=$2; n=${3:-3000}; rounds=${4:-2}
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
cargo build -q --manifest-path "$repo/Cargo.toml" -p integration-tests --bin fixed-client
client=$(cargo metadata -q --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/fixed-client
if [ -n "${KEEP:-}" ]; then work=$KEEP; mkdir -p "$work"; else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$work/proj/config/sys"
cp "$repo/chat-demo/config/sys/route.json" "$work/proj/config/sys/"
echo '{ "cg": { "id": "master-server-1", "host": "127.0.0.1", "port": 3005 } }' > "$work/proj/config/sys/master.json"
servers() { # <io>
  cat > "$work/proj/config/sys/servers.json" <<JSON
{ "cg": {
    "connector": [ { "id": "connector-server-1", "host": "127.0.0.1", "port": 4021, "frontend": true, "clientPort": 4001, "rateLimit": false, "io": "$1" } ],
    "chat": [ { "id": "chat-server-", "idStart": 1, "host": "127.0.0.1", "port": [4101, 4102] } ] } }
JSON
}
side() { # <label> <dir> <io>
  local out="$work/$1"; rm -rf "$out"; mkdir -p "$out"
  servers "$3"
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p.out" \
    "$2/chat-demo" start -e cg -d "$work/proj" --bin "$2/chat-demo" > "$out/master.log" 2>&1 &
  local mpid=$!
  for _ in $(seq 1 240); do grep -q "cluster ready" "$out/master.log" && break; sleep 1; done
  grep -q "cluster ready" "$out/master.log" || { echo "$1: cluster not ready"; kill -INT $mpid; return 1; }
  for r in connector.main.echo chat.main.echo chat.main.rpcEcho room-chat; do
    "$client" 4001 "$r" "$n" > /dev/null
  done
  kill -INT $mpid; wait $mpid || true
  python3 - "$out" "$n" "$1" <<'PY'
import glob, re, sys, collections
out, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
routes = ["connector.main.echo", "chat.main.echo", "chat.main.rpcEcho", "room-chat"]
tot = collections.defaultdict(dict)
for f in glob.glob(f"{out}/*.out.*"):
    text = open(f).read()
    m = re.search(r"--id (\S+)", text[:4000])
    role = m.group(1) if m else "master"
    tot[routes[int(f.rsplit('.', 1)[1]) - 1]][role] = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
for r in routes:
    d = tot[r]
    servers = sum(v for k, v in d.items() if k != "master") / n
    print(f"{label:6} {r:22} servers {servers:8.0f} instr/req  (" + ", ".join(f"{k} {v / n:.0f}" for k, v in sorted(d.items())) + ")")
PY
}
for _ in $(seq 1 "$rounds"); do side A "$a" "$io_a"; side B "$b" "$io_b"; done
