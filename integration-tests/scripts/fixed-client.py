#!/usr/bin/env python3
"""Fixed-count client for callgrind-ab.sh: handshake, login, then N requests of ROUTE one at a time
(one in flight): usage fixed-client.py <port> <route> <n>.
Between the warm-up and the measured loop it zeroes callgrind's counters in every server
(callgrind_control -z), after it dumps them (-d)."""
import json, socket, struct, subprocess, sys, time
port, route, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
def frame(t, body): return struct.pack(">IB", len(body) + 1, t) + body
def read_frame():
    global buf
    while True:
        if len(buf) >= 5:
            ln = struct.unpack(">I", buf[:4])[0]
            if len(buf) >= 4 + ln:
                t = buf[4]; body = buf[5:4 + ln]; buf = buf[4 + ln:]; return t, body
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        buf += d
s.sendall(frame(2, b'{"md5":""}'))
t, body = read_frame(); routes = json.loads(body)["route"]; cmd = routes.index(route)
import os
login = routes.index("connector.main.login")
s.sendall(frame(1, struct.pack(">H", login) + json.dumps({"uid": os.getpid() % 100000 + 1, "room": 1}).encode()))
while True:
    t, body = read_frame()
    if t == 1 and struct.unpack(">H", body[:2])[0] == login: break
payload = json.dumps({"m": "hello", "n": 12345}).encode()
msg = frame(1, struct.pack(">H", cmd) + payload)
def loop(k):
    for _ in range(k):
        s.sendall(msg)
        while True:
            t, body = read_frame()
            if t == 1 and struct.unpack(">H", body[:2])[0] == cmd: break
loop(200)
subprocess.run(["callgrind_control", "-z"], capture_output=True)
time.sleep(1)
t0 = time.time(); loop(n); dt = time.time() - t0
subprocess.run(["callgrind_control", "-d"], capture_output=True)
print(f"{route}: {n} requests in {dt:.1f}s")
