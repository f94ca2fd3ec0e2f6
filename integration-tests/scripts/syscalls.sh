#!/bin/bash
# System calls per request of a frontend, with `strace -c -f`: the callgrind-ab.sh cluster
# (1 TCP frontend, 2 chat servers, rate limit off), without valgrind, the frontend's `io` set
# to `epoll` or `uring`; `fixed-client` sends 100 warm-up requests then `requests` more, one
# at a time, while strace counts every system call of the frontend (all threads).
#
#   integration-tests/scripts/syscalls.sh <dir> <epoll|uring> [requests] [route]
#
# <dir> holds a release `chat-demo` binary (e.g. target/release). Prints strace's table and
# the calls per request (warm-up included: requests + 100; the heartbeat sweep's timer adds
# about one wake-up a second).
set -euo pipefail
dir=$1; io=$2; n=${3:-1000}; route=${4:-connector.main.echo}
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
cargo build -q --manifest-path "$repo/Cargo.toml" -p integration-tests --bin fixed-client
client=$(cargo metadata -q --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/fixed-client
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/proj/config/sys"
cp "$repo/chat-demo/config/sys/route.json" "$work/proj/config/sys/"
echo '{ "sc": { "id": "master-server-1", "host": "127.0.0.1", "port": 3005 } }' > "$work/proj/config/sys/master.json"
cat > "$work/proj/config/sys/servers.json" <<JSON
{ "sc": {
    "connector": [ { "id": "connector-server-1", "host": "127.0.0.1", "port": 4021, "frontend": true, "clientPort": 4001, "rateLimit": false, "io": "$io" } ],
    "chat": [ { "id": "chat-server-", "idStart": 1, "host": "127.0.0.1", "port": [4101, 4102] } ] } }
JSON
"$dir/chat-demo" start -e sc -d "$work/proj" --bin "$dir/chat-demo" > "$work/master.log" 2>&1 &
mpid=$!
for _ in $(seq 1 60); do grep -q "cluster ready" "$work/master.log" && break; sleep 0.5; done
grep -q "cluster ready" "$work/master.log" || { cat "$work/master.log"; kill -INT $mpid; exit 1; }
fpid=$(pgrep -P $mpid -f -- "--id connector-server-1")
strace -c -f -p "$fpid" -o "$work/strace.txt" &
spid=$!
sleep 0.5
"$client" 4001 "$route" "$n" > /dev/null
kill -INT $spid; wait $spid || true
kill -INT $mpid; wait $mpid || true
cat "$work/strace.txt"
python3 - "$work/strace.txt" "$n" "$io" "$route" <<'PY'
import sys
path, n, io, route = sys.argv[1], int(sys.argv[2]) + 100, sys.argv[3], sys.argv[4]
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6])
print(f"{io:6} {route}: {total / n:.2f} system calls per request ({top})")
PY
