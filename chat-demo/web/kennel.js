// kennel.js: a small client for kennel (and mydog 2.x) frontends over WebSocket, reusable by
// any game's web page. It speaks PROTOCOL.md: every frame is [u32 len][u8 type][body], one or
// more whole frames per binary WebSocket message; a handshake whose route list is cached by md5;
// heartbeats; requests and notifies by route name; listeners for pushes.
//
//   import { KennelClient, frontendUrl } from "./kennel.js";
//   const client = new KennelClient(frontendUrl("127.0.0.1", 4003)); // wss:// on an https page
//   await client.connect();                                   // handshake done
//   const reply = await client.request("connector.main.login", { uid: 7, room: 1 });
//   client.on("chat.main.onChat", (msg) => console.log(msg));
//   client.notify("chat.main.send", { text: "hi" });          // no reply expected
//   client.onClose((reason) => console.log("closed:", reason));
//
// Replies carry their request's route (cmd), so requests on one route are answered in order;
// a message on a route with no request waiting is a push. Use notify() for routes whose handler
// sends no reply.

/** Frame types of PROTOCOL.md. */
export const FrameType = Object.freeze({ MESSAGE: 1, HANDSHAKE: 2, HEARTBEAT: 3 });

/**
 * The WebSocket URL of a frontend at `host`:`port` for this page: `wss://` when the page was
 * loaded over https (a browser refuses `ws://` from an https page; the frontend's entry then
 * has `"ssl": true`), else `ws://`. An IPv6 host is bracketed.
 * @param {string} host
 * @param {number} port
 * @param {{protocol: string}} [loc=globalThis.location]  the page's location.
 */
export function frontendUrl(host, port, loc = globalThis.location) {
  if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
  const scheme = loc?.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${host}:${port}`;
}

/** The server's default `maxLen` (10 MiB): a longer incoming frame is a protocol error. */
export const DEFAULT_MAX_LEN = 10 * 1024 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** One frame: `[u32 len][u8 type][body]`, `len` counting the type byte and the body. */
export function encodeFrame(type, body = new Uint8Array(0)) {
  const out = new Uint8Array(5 + body.length);
  new DataView(out.buffer).setUint32(0, body.length + 1);
  out[4] = type;
  out.set(body, 5);
  return out;
}

/** A message frame: `[u16 cmd][payload]` with `msg` encoded as JSON text. */
export function encodeMessage(cmd, msg) {
  const payload = encoder.encode(JSON.stringify(msg === undefined ? null : msg));
  const body = new Uint8Array(2 + payload.length);
  new DataView(body.buffer).setUint16(0, cmd);
  body.set(payload, 2);
  return encodeFrame(FrameType.MESSAGE, body);
}

/** Splits a message frame's body into its cmd and decoded JSON payload (empty = null). */
export function decodeMessage(body) {
  if (body.length < 2) {
    throw new Error(`message frame of ${body.length} bytes has no cmd`);
  }
  const cmd = new DataView(body.buffer, body.byteOffset, body.length).getUint16(0);
  const text = decoder.decode(body.subarray(2));
  return { cmd, msg: text.length === 0 ? null : JSON.parse(text) };
}

/**
 * Reassembles frames from chunks (WebSocket messages normally hold whole frames; a split one
 * is kept until its rest arrives). `push` returns the complete frames as `{type, body}` and
 * throws on a frame length of 0 or above `maxLen`.
 */
export class FrameDecoder {
  constructor(maxLen = DEFAULT_MAX_LEN) {
    this.maxLen = maxLen;
    this.buf = new Uint8Array(0);
  }

  push(chunk) {
    const bytes = chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk);
    if (this.buf.length === 0) {
      this.buf = bytes;
    } else {
      const joined = new Uint8Array(this.buf.length + bytes.length);
      joined.set(this.buf);
      joined.set(bytes, this.buf.length);
      this.buf = joined;
    }
    const frames = [];
    let at = 0;
    while (this.buf.length - at >= 4) {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset + at, 4).getUint32(0);
      if (len === 0 || len > this.maxLen) {
        throw new Error(`bad frame length ${len} (1..${this.maxLen})`);
      }
      if (this.buf.length - at < 4 + len) break;
      frames.push({
        type: this.buf[at + 4],
        body: this.buf.slice(at + 5, at + 4 + len),
      });
      at += 4 + len;
    }
    this.buf = this.buf.slice(at);
    return frames;
  }
}

/** localStorage when the page may use it, else null (then nothing is cached). */
function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

/** A connection to one frontend. */
export class KennelClient {
  /**
   * @param {string} url  ws:// or wss:// address of a WebSocket frontend.
   * @param {object} [options]
   * @param {number} [options.requestTimeout=10000]  ms before request() rejects.
   * @param {number} [options.connectTimeout=10000]  ms before connect() rejects.
   * @param {?Storage} [options.storage=localStorage]  where the route list is cached by md5.
   * @param {Function} [options.WebSocket=globalThis.WebSocket]  the WebSocket constructor.
   * @param {number} [options.maxLen]  longest frame accepted from the server.
   */
  constructor(url, options = {}) {
    this.url = url;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.decoder = new FrameDecoder(options.maxLen ?? DEFAULT_MAX_LEN);
    /** Route list from the handshake (index = cmd). */
    this.routes = [];
    /** md5 of the route list, as the server computes it. */
    this.md5 = "";
    /** Heartbeat interval the server asked for, in seconds (0 = off). */
    this.heartbeat = 0;
    /** Whether the route list came from the cache (the server sent none). */
    this.routesFromCache = false;
    /** Called with `(route, msg)` for a push nobody listens to. */
    this.onUnhandled = (route, msg) => console.warn(`kennel: push on ${route} with no listener`, msg);
    this.ws = null;
    this.state = "new"; // new -> connecting -> open -> closed
    this.routeIndex = new Map();
    this.pending = new Map(); // cmd -> [{resolve, reject, timer, done}]
    this.listeners = new Map(); // route -> Set<fn>
    this.closeListeners = new Set();
    this.timers = [];
    this.lastHeard = 0;
  }

  get cacheKey() {
    return `kennel.routes:${this.url}`;
  }

  /** The cached `{md5, routes}` for this address, or null. */
  cached() {
    try {
      const c = JSON.parse(this.storage?.getItem(this.cacheKey) ?? "null");
      return c && typeof c.md5 === "string" && Array.isArray(c.routes) ? c : null;
    } catch {
      return null;
    }
  }

  /**
   * Opens the socket and does the handshake; resolves with `{md5, heartbeat, routes,
   * fromCache}`, rejects with an Error saying why (unreachable, closed, timeout, bad reply).
   */
  connect() {
    if (this.state !== "new") {
      return Promise.reject(new Error(`connect() on a ${this.state} client`));
    }
    if (typeof this.WebSocket !== "function") {
      return Promise.reject(new Error("no WebSocket in this environment"));
    }
    this.state = "connecting";
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this.WebSocket(this.url);
      } catch (e) {
        this.state = "closed";
        reject(new Error(`cannot open ${this.url}: ${e.message}`));
        return;
      }
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      this.handshakeDone = { resolve, reject };
      this.after(this.connectTimeout, () => {
        if (this.state === "connecting") {
          this.shutdown(`no handshake from ${this.url} within ${this.connectTimeout} ms`);
        }
      });
      ws.onopen = () => {
        const cached = this.cached();
        const hello = encoder.encode(JSON.stringify({ md5: cached ? cached.md5 : "" }));
        this.sendFrame(encodeFrame(FrameType.HANDSHAKE, hello));
      };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onerror = () => {}; // the close event that follows carries the outcome
      ws.onclose = (ev) => {
        const why = ev && ev.reason ? ev.reason : `code ${ev ? ev.code : "?"}`;
        this.shutdown(
          this.state === "connecting" ? `cannot connect to ${this.url} (${why})` : `connection closed (${why})`,
        );
      };
    });
  }

  /** Sends `msg` on `route` and resolves with the reply (rejects on timeout or close). */
  request(route, msg) {
    let cmd;
    try {
      cmd = this.cmdOf(route);
      this.sendFrame(encodeMessage(cmd, msg));
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, done: false, timer: null };
      entry.timer = setTimeout(() => {
        // Stay queued: a late reply is matched to this request and discarded.
        entry.done = true;
        reject(new Error(`${route}: no reply within ${this.requestTimeout} ms`));
      }, this.requestTimeout);
      if (!this.pending.has(cmd)) this.pending.set(cmd, []);
      this.pending.get(cmd).push(entry);
    });
  }

  /** Sends `msg` on `route` expecting no reply; throws when not connected or unknown route. */
  notify(route, msg) {
    this.sendFrame(encodeMessage(this.cmdOf(route), msg));
  }

  /** Calls `fn(msg)` for every push on `route`; returns a function that removes it. */
  on(route, fn) {
    if (!this.listeners.has(route)) this.listeners.set(route, new Set());
    this.listeners.get(route).add(fn);
    return () => this.off(route, fn);
  }

  /** Removes a push listener. */
  off(route, fn) {
    this.listeners.get(route)?.delete(fn);
  }

  /** Calls `fn(reason)` once the connection is closed (after connect() succeeded or not). */
  onClose(fn) {
    this.closeListeners.add(fn);
    return () => this.closeListeners.delete(fn);
  }

  /** Closes the connection; pending requests reject. */
  close(reason = "closed by the client") {
    this.shutdown(reason);
  }

  // ------------------------------------------------------------------ internals

  cmdOf(route) {
    if (this.state !== "open") throw new Error(`not connected (${this.state})`);
    const cmd = this.routeIndex.get(route);
    if (cmd === undefined) throw new Error(`unknown route "${route}" (not in the server's route list)`);
    return cmd;
  }

  sendFrame(frame) {
    if (!this.ws || this.ws.readyState !== 1) throw new Error("not connected (socket not open)");
    this.ws.send(frame);
  }

  after(ms, fn) {
    this.timers.push(setTimeout(fn, ms));
  }

  receive(data) {
    this.lastHeard = Date.now();
    let frames;
    try {
      if (typeof data === "string") throw new Error("a text WebSocket message (frames travel in binary ones)");
      frames = this.decoder.push(data);
    } catch (e) {
      this.shutdown(`protocol error: ${e.message}`);
      return;
    }
    for (const f of frames) {
      try {
        this.frame(f);
      } catch (e) {
        this.shutdown(`protocol error: ${e.message}`);
        return;
      }
      if (this.state === "closed") return;
    }
  }

  frame({ type, body }) {
    if (type === FrameType.HANDSHAKE) {
      if (this.state !== "connecting") throw new Error("a second handshake reply");
      this.handshake(JSON.parse(decoder.decode(body)));
    } else if (type === FrameType.HEARTBEAT) {
      // lastHeard is already refreshed
    } else if (type === FrameType.MESSAGE) {
      if (this.state !== "open") throw new Error("a message before the handshake");
      let cmd, msg, error;
      try {
        ({ cmd, msg } = decodeMessage(body));
      } catch (e) {
        if (body.length < 2) throw e;
        cmd = new DataView(body.buffer, body.byteOffset, 2).getUint16(0);
        error = new Error(`undecodable message on cmd ${cmd}: ${e.message}`);
      }
      this.message(cmd, msg, error);
    } else {
      throw new Error(`unknown frame type ${type}`);
    }
  }

  handshake(reply) {
    if (!reply || typeof reply.md5 !== "string") throw new Error("handshake reply without md5");
    let routes = reply.route;
    this.routesFromCache = false;
    if (Array.isArray(routes)) {
      try {
        this.storage?.setItem(this.cacheKey, JSON.stringify({ md5: reply.md5, routes }));
      } catch {
        // a full or forbidden storage only costs the next handshake the route list
      }
    } else {
      const cached = this.cached();
      if (!cached || cached.md5 !== reply.md5) {
        throw new Error(`server sent no route list for md5 ${reply.md5} and none is cached`);
      }
      routes = cached.routes;
      this.routesFromCache = true;
    }
    this.routes = routes;
    this.md5 = reply.md5;
    this.heartbeat = Number(reply.heartbeat) || 0;
    this.routeIndex = new Map(routes.map((r, i) => [r, i]));
    this.state = "open";
    if (this.heartbeat > 0) this.startHeartbeat(this.heartbeat * 1000);
    const done = this.handshakeDone;
    this.handshakeDone = null;
    done?.resolve({
      md5: this.md5,
      heartbeat: this.heartbeat,
      routes: this.routes,
      fromCache: this.routesFromCache,
    });
  }

  startHeartbeat(ms) {
    this.lastHeard = Date.now();
    const beat = setInterval(() => {
      if (Date.now() - this.lastHeard > 2 * ms) {
        this.shutdown(`heartbeat timeout: nothing from the server for ${(2 * ms) / 1000} s`);
        return;
      }
      try {
        this.sendFrame(encodeFrame(FrameType.HEARTBEAT));
      } catch {
        // the close event reports it
      }
    }, ms);
    this.timers.push(beat);
  }

  // A reply resolves (or, undecodable, rejects) the oldest request on its cmd; anything else
  // is a push for the route's listeners. An undecodable push is reported, the link stays up.
  message(cmd, msg, error) {
    const queue = this.pending.get(cmd);
    if (queue && queue.length > 0) {
      const entry = queue.shift();
      clearTimeout(entry.timer);
      if (!entry.done) error ? entry.reject(error) : entry.resolve(msg);
      return;
    }
    const route = this.routes[cmd];
    if (route === undefined) throw new Error(`cmd ${cmd} is outside the route list`);
    if (error) {
      console.warn(`kennel: push on ${route} dropped: ${error.message}`);
      return;
    }
    const fns = this.listeners.get(route);
    if (!fns || fns.size === 0) {
      this.onUnhandled(route, msg);
      return;
    }
    for (const fn of [...fns]) {
      try {
        fn(msg);
      } catch (e) {
        console.error(`kennel: listener of ${route} threw`, e);
      }
    }
  }

  shutdown(reason) {
    if (this.state === "closed") return;
    const wasConnecting = this.state === "connecting";
    this.state = "closed";
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.timers = [];
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.onmessage = null;
      try {
        this.ws.close();
      } catch {
        // already closing
      }
    }
    const err = new Error(reason);
    if (wasConnecting && this.handshakeDone) {
      this.handshakeDone.reject(err);
      this.handshakeDone = null;
    }
    for (const queue of this.pending.values()) {
      for (const entry of queue) {
        clearTimeout(entry.timer);
        if (!entry.done) entry.reject(err);
      }
    }
    this.pending.clear();
    for (const fn of this.closeListeners) {
      try {
        fn(reason);
      } catch (e) {
        console.error("kennel: close listener threw", e);
      }
    }
  }
}
