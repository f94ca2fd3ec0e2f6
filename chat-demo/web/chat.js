// chat.js: the chat-demo page. Log in with a name (hashed to a numeric uid, or a number used
// as the uid) and a room, then see the room's messages live and send your own. It talks to the
// WebSocket frontend named by /config.json (or by ?ws=ws://host:port) through kennel.js, using
// the chat contract: connector.main.login {uid, room}, chat.main.join {room}, chat.main.send
// {name, text} and the push chat.main.onChat {name, text, u}.

import { KennelClient, frontendUrl as wsUrl } from "./kennel.js";

const $ = (id) => document.getElementById(id);

/** A uid for a name: the number itself when the name is one (1..4294967295), else FNV-1a. */
export function uidOf(name) {
  if (/^[0-9]+$/.test(name)) {
    const n = Number(name);
    if (n >= 1 && n <= 0xffffffff) return n;
  }
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(name)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h || 1;
}

/** The frontend's WebSocket address: ?ws=..., else from /config.json. */
async function frontendUrl() {
  const given = new URLSearchParams(location.search).get("ws");
  if (given) return given;
  const res = await fetch("config.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  const cfg = await res.json();
  return wsUrl(cfg.ws.host || location.hostname, cfg.ws.port);
}

let client = null;
let me = null; // {name, uid, room}

function show(state) {
  document.body.dataset.state = state;
  $("login").hidden = state === "chat";
  $("chat").hidden = state !== "chat";
  $("login-button").disabled = state === "connecting";
}

function error(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function status(text) {
  $("status").textContent = text;
}

function addLine(className, parts) {
  const li = document.createElement("li");
  li.className = className;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  const list = $("messages");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function onChat(msg) {
  const mine = me && msg.u === me.uid;
  const who = typeof msg.name === "string" && msg.name ? msg.name : `uid ${msg.u}`;
  addLine(mine ? "msg mine" : "msg", [
    ["time", new Date().toLocaleTimeString()],
    ["who", who],
    ["text", typeof msg.text === "string" ? msg.text : JSON.stringify(msg)],
  ]);
}

async function login(event) {
  event.preventDefault();
  error("");
  const name = $("name").value.trim();
  const room = Number($("room").value);
  if (!name) return error("Type a name first.");
  if (!Number.isInteger(room) || room < 0) return error("The room is a whole number (0 or more).");
  const uid = uidOf(name);
  show("connecting");
  let url = "(unknown address)";
  try {
    url = await frontendUrl();
    status(`connecting to ${url}…`);
    client = new KennelClient(url);
    const hs = await client.connect();
    document.body.dataset.routes = hs.fromCache ? "cached" : "fetched";
    const reply = await client.request("connector.main.login", { uid, room });
    if (reply.code === 1) throw new Error(`uid ${uid} (“${name}”) is already online or invalid: pick another name.`);
    if (reply.code !== 0) throw new Error(`login refused (code ${reply.code})`);
    if (!reply.chatServerId) throw new Error("No chat server is up yet: try again in a moment.");
    me = { name, uid, room };
    client.on("chat.main.onChat", onChat);
    const joined = await client.request("chat.main.join", { room });
    if (joined.code !== 0) throw new Error(`cannot join room ${room} (code ${joined.code})`);
    const mine = client;
    client.onClose((reason) => {
      if (client !== mine) return; // left on purpose
      client = null;
      show("login");
      status("");
      error(`Disconnected: ${reason}.`);
    });
    $("messages").replaceChildren();
    $("room-title").textContent = `Room ${room}`;
    $("whoami").textContent = `${name} (uid ${uid}) on ${reply.frontend} / ${joined.chat}`;
    addLine("info", [["text", `You joined room ${room}: ${joined.size} member(s) here now.`]]);
    show("chat");
    status(`in room ${room}`);
    $("text").focus();
  } catch (e) {
    client?.close("login failed");
    client = null;
    show("login");
    status("");
    error(e.message.startsWith("cannot connect") ? `Cannot reach the chat server at ${url}.` : e.message);
  }
}

function send(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !client) return;
  try {
    client.notify("chat.main.send", { name: me.name, text });
    $("text").value = "";
  } catch (e) {
    error(`Not sent: ${e.message}`);
  }
}

function leave() {
  const c = client;
  client = null;
  c?.close("left");
  show("login");
  status("");
  error("");
}

$("login").addEventListener("submit", login);
$("send-form").addEventListener("submit", send);
$("leave").addEventListener("click", leave);
show("login");
