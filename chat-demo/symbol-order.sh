#!/bin/sh
# Writes chat-demo/symbol-order.txt: the functions a chat-demo server runs (boot, mesh, and a
# few requests of every kind), then those the master runs, for the linker to place first in
# .text (see build.rs). Each server runs under valgrind's callgrind in a 1 connector + 2 chat
# cluster on free ports in a temp dir; a small Python client logs in, joins, chats, echoes and
# calls rpcEcho. Needs valgrind and python3. Run it from anywhere after code changes that move
# a lot of code (new dependencies, a new rustc); an old file still works, it only packs less.
#
#   sh chat-demo/symbol-order.sh
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p chat-demo
bin="$root/target/release/chat-demo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/config/sys" "$tmp/cg"
cp chat-demo/config/sys/route.json "$tmp/config/sys/"
# Five free ports: master, connector rpc, client port, two chat servers.
set -- $(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
cat >"$tmp/config/sys/master.json" <<EOF
{"development": {"id": "master-server-1", "host": "127.0.0.1", "port": $1}}
EOF
cat >"$tmp/config/sys/servers.json" <<EOF
{"development": {
  "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": $2, "frontend": true, "clientPort": $3}],
  "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "port": $4},
           {"id": "chat-server-2", "host": "127.0.0.1", "port": $5}]}}
EOF
client_port=$3

# The CLI, the master it detaches and every server it spawns, each with its own profile.
valgrind -q --tool=callgrind --trace-children=yes --demangle=no --compress-strings=no \
    --dump-instr=no --callgrind-out-file="$tmp/cg/cg.%p" \
    "$bin" start --dir "$tmp" --daemon --wait 300
# Meshed: each chat server has a link to the other and to the connector.
for i in $(seq 600); do
    n=$(cat "$tmp"/logs/chat-server-*.log | grep -c "peer link up" || true)
    [ "$n" -ge 4 ] && break
    sleep 0.1
done

python3 - "$client_port" <<'EOF'
import json, socket, struct, sys
port = int(sys.argv[1])
def frame(t, body): return struct.pack(">IB", len(body) + 1, t) + body
def read_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("connection closed")
        b += c
    return b
def read_frame(s):
    n, t = struct.unpack(">IB", read_exact(s, 5))
    return t, read_exact(s, n - 1)
routes = json.load(open("chat-demo/config/sys/route.json"))
cmd = {r: i for i, r in enumerate(routes)}
def req(s, route, obj):
    c = cmd[route]
    s.sendall(frame(1, struct.pack(">H", c) + json.dumps(obj).encode()))
    while True:
        t, b = read_frame(s)
        if t == 1 and struct.unpack(">H", b[:2])[0] == c: return json.loads(b[2:])
socks = []
for i, room in enumerate([0, 0, 1]):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(frame(2, b'{"md5":""}'))
    read_frame(s)
    req(s, "connector.main.login", {"uid": 100 + i, "room": room})
    req(s, "chat.main.join", {"room": room})
    socks.append(s)
for n in range(20):
    for s in socks:
        req(s, "connector.main.echo", {"n": n})
        req(s, "chat.main.echo", {"n": n})
        req(s, "chat.main.rpcEcho", {"n": n})
        s.sendall(frame(1, struct.pack(">H", cmd["chat.main.send"]) + b'{"s":1}'))
        s.sendall(frame(3, b""))
req(socks[0], "chat.main.rpcEcho", {"n": "last"})
for s in socks: s.close()
EOF

"$bin" stop --dir "$tmp"
# callgrind writes each profile when its process exits.
for i in $(seq 300); do
    pgrep -f "callgrind-out-file=$tmp/" >/dev/null || break
    sleep 0.1
done

nm --defined-only "$bin" | awk 'NF == 3 && $2 ~ /[tTwW]/ { print $3 }' >"$tmp/syms"
python3 - "$tmp" >chat-demo/symbol-order.txt <<'EOF'
import glob, sys
tmp = sys.argv[1]
syms = set(open(f"{tmp}/syms").read().split())
servers, master = [], []
for f in sorted(glob.glob(f"{tmp}/cg/cg.*")):
    lines = open(f).read().splitlines()
    cmd = next((l for l in lines if l.startswith("cmd:")), "")
    if " --id " in cmd: out = servers
    elif "--detached" in cmd: out = master
    else: continue  # the CLI that started the master
    for l in lines:
        if l.startswith(("fn=", "cfn=")):
            name = l.split("=", 1)[1].strip()
            if name in syms: out.append(name)
seen = set()
for name in servers + master:
    if name not in seen:
        seen.add(name)
        print(name)
EOF
echo "chat-demo/symbol-order.txt: $(wc -l <chat-demo/symbol-order.txt) functions"
