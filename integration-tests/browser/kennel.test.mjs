// Unit tests of chat-demo/web/kennel.js (run by `node --test`, from integration-tests/tests/
// browser.rs): the frame codec, and the client against an in-process fake frontend that speaks
// PROTOCOL.md (handshake with md5 caching, replies by cmd, pushes, heartbeats, close).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";

import {
  FrameDecoder,
  FrameType,
  KennelClient,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  frontendUrl,
} from "../../chat-demo/web/kennel.js";

const ROUTES = ["connector.main.login", "chat.main.join", "chat.main.send", "chat.main.onChat"];
const md5 = (routes) => createHash("md5").update(JSON.stringify(routes)).digest("hex");

/** A Storage stand-in. */
class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
}

/**
 * A fake frontend: hands the client a WebSocket class whose sockets deliver frames to it; it
 * answers handshakes (route list only when the md5 differs), echoes messages on their cmd
 * (except `chat.main.send`, which it pushes back on `chat.main.onChat`), and answers heartbeats
 * while `answerHeartbeats` is set.
 */
class FakeFrontend {
  constructor({ heartbeat = 0 } = {}) {
    this.heartbeat = heartbeat;
    this.answerHeartbeats = true;
    this.handshakes = [];
    this.heartbeats = 0;
    this.received = [];
    this.socket = null;
    const server = this;
    this.WebSocket = class {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.decoder = new FrameDecoder();
        server.socket = this;
        setTimeout(() => {
          this.readyState = 1;
          this.onopen?.();
        }, 0);
      }
      send(bytes) {
        assert.equal(this.readyState, 1, "send on a socket that is not open");
        for (const f of this.decoder.push(bytes)) server.onFrame(this, f);
      }
      close() {
        this.readyState = 3;
      }
      deliver(bytes) {
        const copy = new Uint8Array(bytes);
        setTimeout(() => this.onmessage?.({ data: copy.buffer }), 0);
      }
      serverClose(reason) {
        this.readyState = 3;
        setTimeout(() => this.onclose?.({ code: 1000, reason }), 0);
      }
    };
  }

  onFrame(sock, { type, body }) {
    if (type === FrameType.HANDSHAKE) {
      const hello = JSON.parse(new TextDecoder().decode(body));
      this.handshakes.push(hello);
      const reply = { md5: md5(ROUTES), heartbeat: this.heartbeat };
      if (hello.md5 !== reply.md5) reply.route = ROUTES;
      sock.deliver(encodeFrame(FrameType.HANDSHAKE, new TextEncoder().encode(JSON.stringify(reply))));
    } else if (type === FrameType.HEARTBEAT) {
      this.heartbeats += 1;
      if (this.answerHeartbeats) sock.deliver(encodeFrame(FrameType.HEARTBEAT));
    } else {
      const { cmd, msg } = decodeMessage(body);
      this.received.push([ROUTES[cmd], msg]);
      if (ROUTES[cmd] === "chat.main.send") {
        sock.deliver(encodeMessage(ROUTES.indexOf("chat.main.onChat"), { ...msg, u: 7 }));
      } else {
        sock.deliver(encodeMessage(cmd, msg));
      }
    }
  }
}

test("frames survive splitting and coalescing; bad lengths are errors", () => {
  const a = encodeMessage(5, { a: 1, s: "héllo" });
  const b = encodeFrame(FrameType.HEARTBEAT);
  const both = new Uint8Array([...a, ...b]);
  const d = new FrameDecoder();
  const out = [];
  for (const chunk of [both.slice(0, 3), both.slice(3, 9), both.slice(9)]) out.push(...d.push(chunk));
  assert.equal(out.length, 2);
  assert.equal(out[0].type, FrameType.MESSAGE);
  assert.deepEqual(decodeMessage(out[0].body), { cmd: 5, msg: { a: 1, s: "héllo" } });
  assert.deepEqual(out[1], { type: FrameType.HEARTBEAT, body: new Uint8Array(0) });
  // Header: u32 BE length (type byte + body), then the type.
  assert.deepEqual([...b], [0, 0, 0, 1, 3]);
  assert.deepEqual([...a.slice(0, 7)], [0, 0, 0, a.length - 4, 1, 0, 5]);
  assert.throws(() => new FrameDecoder().push(new Uint8Array([0, 0, 0, 0, 1])), /bad frame length 0/);
  assert.throws(() => new FrameDecoder(100).push(new Uint8Array([0, 0, 1, 0])), /bad frame length 256/);
});

test("handshake caches the route list by md5; requests, notifies and pushes by route name", async () => {
  const server = new FakeFrontend();
  const storage = new MemoryStorage();
  const first = new KennelClient("ws://fake:1", { WebSocket: server.WebSocket, storage });
  const hs = await first.connect();
  assert.deepEqual(server.handshakes, [{ md5: "" }]);
  assert.equal(hs.fromCache, false);
  assert.deepEqual(hs.routes, ROUTES);
  assert.equal(hs.md5, md5(ROUTES));

  // Two requests in flight on one route resolve in order; a push reaches its listener.
  const [r1, r2] = await Promise.all([
    first.request("chat.main.join", { room: 1 }),
    first.request("chat.main.join", { room: 2 }),
  ]);
  assert.deepEqual([r1, r2], [{ room: 1 }, { room: 2 }]);
  const pushed = new Promise((resolve) => first.on("chat.main.onChat", resolve));
  first.notify("chat.main.send", { text: "hi" });
  assert.deepEqual(await pushed, { text: "hi", u: 7 });
  await assert.rejects(first.request("no.such.route", {}), /unknown route "no.such.route"/);
  first.close();
  assert.equal(first.state, "closed");

  // A second client sends the cached md5 and gets no route list, yet knows every route.
  const second = new KennelClient("ws://fake:1", { WebSocket: server.WebSocket, storage });
  const again = await second.connect();
  assert.deepEqual(server.handshakes[1], { md5: md5(ROUTES) });
  assert.equal(again.fromCache, true);
  assert.deepEqual(await second.request("connector.main.login", { uid: 3 }), { uid: 3 });
  assert.deepEqual(server.received.at(-1), ["connector.main.login", { uid: 3 }]);
  second.close();
});

test("a matching md5 uses the cached list; no list and no matching cache fails clearly", async () => {
  const server = new FakeFrontend();
  const storage = new MemoryStorage();
  // The cache claims the server's md5 but holds another list; the server omits the list...
  storage.setItem("kennel.routes:ws://fake:2", JSON.stringify({ md5: md5(ROUTES), routes: ["x"] }));
  const c = new KennelClient("ws://fake:2", { WebSocket: server.WebSocket, storage });
  const hs = await c.connect();
  // ...so the cached list is what the client uses (md5 equal = list equal, by contract).
  assert.deepEqual(hs.routes, ["x"]);
  c.close();
  // A cache keyed to another md5 with a server that sends no list is an error, not a hang.
  const mute = new FakeFrontend();
  mute.onFrame = (sock) =>
    sock.deliver(encodeFrame(FrameType.HANDSHAKE, new TextEncoder().encode('{"md5":"abc","heartbeat":0}')));
  const d = new KennelClient("ws://fake:3", { WebSocket: mute.WebSocket, storage: null });
  await assert.rejects(d.connect(), /no route list for md5 abc and none is cached/);
});

test("heartbeats are sent, and a silent server is dropped after two intervals", { timeout: 20000 }, async () => {
  const server = new FakeFrontend({ heartbeat: 0.3 }); // 300 ms, to keep the test short
  const beats = new Promise((resolve) => {
    const onFrame = server.onFrame.bind(server);
    server.onFrame = (sock, f) => {
      onFrame(sock, f);
      if (server.heartbeats === 3) resolve();
    };
  });
  const c = new KennelClient("ws://fake:4", { WebSocket: server.WebSocket, storage: null });
  await c.connect();
  const closed = new Promise((resolve) => c.onClose(resolve));
  await beats;
  assert.equal(c.state, "open", "answered heartbeats keep the link up");
  server.answerHeartbeats = false;
  const silentSince = Date.now();
  assert.match(await closed, /heartbeat timeout: nothing from the server for 0.6 s/);
  assert.ok(Date.now() - silentSince >= 300, "closed before the server was silent for long");
});

test("a server close rejects pending requests and tells close listeners", async () => {
  const server = new FakeFrontend();
  server.onFrame = function (sock, f) {
    if (f.type === FrameType.MESSAGE) return; // never replies
    FakeFrontend.prototype.onFrame.call(this, sock, f);
  };
  const c = new KennelClient("ws://fake:5", { WebSocket: server.WebSocket, storage: null });
  await c.connect();
  const closed = new Promise((resolve) => c.onClose(resolve));
  const req = c.request("chat.main.join", { room: 1 });
  server.socket.serverClose("going away");
  await assert.rejects(req, /connection closed \(going away\)/);
  assert.match(await closed, /going away/);
  assert.throws(() => c.notify("chat.main.send", {}), /not connected/);
});

test("a request with no reply times out with the route in the error", async () => {
  const server = new FakeFrontend();
  server.onFrame = function (sock, f) {
    if (f.type === FrameType.MESSAGE) return;
    FakeFrontend.prototype.onFrame.call(this, sock, f);
  };
  const c = new KennelClient("ws://fake:6", {
    WebSocket: server.WebSocket,
    storage: null,
    requestTimeout: 30,
  });
  await c.connect();
  await assert.rejects(c.request("chat.main.join", {}), /chat.main.join: no reply within 30 ms/);
  c.close();
});

test("connect to nothing rejects with the address", async () => {
  class Refused {
    constructor() {
      this.readyState = 0;
      setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 0);
    }
    close() {}
  }
  const c = new KennelClient("ws://127.0.0.1:9", { WebSocket: Refused, storage: null });
  await assert.rejects(c.connect(), /cannot connect to ws:\/\/127.0.0.1:9 \(code 1006\)/);
});

test("frontendUrl uses wss:// on an https page and brackets IPv6 hosts", () => {
  assert.equal(frontendUrl("127.0.0.1", 4003, { protocol: "https:" }), "wss://127.0.0.1:4003");
  assert.equal(frontendUrl("127.0.0.1", 4003, { protocol: "http:" }), "ws://127.0.0.1:4003");
  assert.equal(frontendUrl("::1", 4003, { protocol: "https:" }), "wss://[::1]:4003");
  assert.equal(frontendUrl("[::1]", 4003, { protocol: "http:" }), "ws://[::1]:4003");
  assert.equal(frontendUrl("game.example.com", 443, undefined), "ws://game.example.com:443");
});
