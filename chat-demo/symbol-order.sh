#!/bin/sh
# Writes chat-demo/symbol-order.txt: the functions a chat-demo server runs (boot, mesh, a few
# requests of every kind, stop), then those the master runs, for the linker to place first in
# .text (see build.rs). A 1 connector + 50 chat cluster (the bench's boot topology) runs on free
# ports in a temp dir, the master and three servers under valgrind's callgrind; a small Python
# client logs in, joins, chats, echoes and calls rpcEcho. Needs valgrind and python3.
#
# Run it after changes that rename many symbols (a new dependency of kennel or chat-demo, a
# new rustc, other profile settings): symbol names carry hashes, and names the file lists that
# no longer exist are skipped, so an old file still links, it only packs less code.
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

# Free ports: master, connector rpc, client port, then 50 consecutive ones for the chat servers.
set -- $(python3 -c '
import random, socket
while True:
    base = random.randrange(20000, 60000)
    ss = []
    try:
        for p in range(base, base + 53):
            s = socket.socket()
            ss.append(s)
            s.bind(("127.0.0.1", p))
        break
    except OSError:
        for s in ss:
            s.close()
print(base, base + 1, base + 2, base + 3, base + 52)')
cat >"$tmp/config/sys/master.json" <<EOF
{"development": {"id": "master-server-1", "host": "127.0.0.1", "port": $1}}
EOF
cat >"$tmp/config/sys/servers.json" <<EOF
{"development": {
  "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": $2, "frontend": true, "clientPort": $3}],
  "chat": [{"id": "chat-server-", "idStart": 1, "host": "127.0.0.1", "port": [$4, $5]}]}}
EOF
client_port=$3

# The CLI runs under callgrind and the trace follows the master it detaches; the master starts
# every server through wrap.sh (not followed), which profiles connector-server-1, chat-server-1
# and chat-server-2 and runs the others natively.
cg="valgrind -q --tool=callgrind --demangle=no --compress-strings=no --dump-instr=no"
cat >"$tmp/wrap.sh" <<EOF
#!/bin/sh
case " \$* " in
  *" connector-server-1 "*|*" chat-server-1 "*|*" chat-server-2 "*)
    exec $cg --callgrind-out-file="$tmp/cg/cg.%p" "$bin" "\$@" ;;
  *) exec "$bin" "\$@" ;;
esac
EOF
chmod +x "$tmp/wrap.sh"
$cg --trace-children=yes --trace-children-skip="$tmp/wrap.sh" \
    --callgrind-out-file="$tmp/cg/cg.%p" \
    "$bin" start --dir "$tmp" --bin "$tmp/wrap.sh" --daemon --wait 300

# Meshed: each profiled server has a link to the 50 others (at most 2 minutes).
for i in $(seq 1200); do
    ready=yes
    for s in connector-server-1 chat-server-1 chat-server-2; do
        n=$(grep -c "peer link up" "$tmp/logs/$s.log" || true)
        [ "$n" -ge 50 ] || ready=no
    done
    [ $ready = yes ] && break
    sleep 0.1
done

# Rooms 0 and 1 are on chat-server-1 and chat-server-2; rpcEcho calls random chat servers.
python3 - "$client_port" <<'PY'
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
for n in range(100):
    for s in socks:
        req(s, "connector.main.echo", {"n": n})
        req(s, "chat.main.echo", {"n": n})
        req(s, "chat.main.rpcEcho", {"n": n})
        s.sendall(frame(1, struct.pack(">H", cmd["chat.main.send"]) + b'{"s":1}'))
        s.sendall(frame(3, b""))
req(socks[0], "chat.main.rpcEcho", {"n": "last"})
for s in socks: s.close()
PY

"$bin" stop --dir "$tmp"
# callgrind writes each profile when its process exits.
for i in $(seq 600); do
    pgrep -f "callgrind-out-file=$tmp/" >/dev/null || break
    sleep 0.1
done

nm --defined-only "$bin" | awk 'NF == 3 && $2 ~ /[tTwW]/ { print $3 }' >"$tmp/syms"
python3 - "$tmp" >chat-demo/symbol-order.txt <<'PY'
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
# Also what valgrind cannot profile: the entry point (crt1.o) and code for CPU features it
# does not emulate (SHA extensions: sha2's x86_sha, which peer-link authentication runs).
servers = ["_start"] + servers + sorted(n for n in syms if "x86_sha" in n)
seen = set()
for name in servers + master:
    if name not in seen:
        seen.add(name)
        print(name)
PY
echo "chat-demo/symbol-order.txt: $(wc -l <chat-demo/symbol-order.txt) functions"
