// End-to-end test of the chat page in headless Chromium (run by integration-tests/tests/
// browser.rs against a real cluster): two users log in to one room in two browser contexts,
// each sends, each sees the other's message; a third user with a taken name sees the error;
// a user who leaves and logs in again reuses the cached route list. Screenshots go to the
// given path (and <path>-alice.png). Prints one JSON line of what the pages showed, which the
// Rust test asserts on; exits non-zero with the reason on any failure.
//
//   KENNEL_NODE_MODULES=<dir holding node_modules/playwright-core> \
//     node chat-e2e.mjs http://127.0.0.1:4080/ target/test-artifacts/browser-chat.png
//
// For an https page, KENNEL_SPKI_PIN=<base64 SHA-256 of the certificate's public key> makes
// Chromium trust that one key (--ignore-certificate-errors-spki-list).

import { createRequire } from "node:module";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node chat-e2e.mjs <page url> <screenshot.png>");
  process.exit(2);
}
const modules = process.env.KENNEL_NODE_MODULES ?? import.meta.dirname;
const { chromium } = createRequire(join(modules, "index.js"))("playwright-core");
const executablePath = process.env.KENNEL_CHROMIUM ?? "/usr/bin/chromium";
const STEP_TIMEOUT = 20000;
// An https page's certificate is trusted by its public key's pin (base64 of the SPKI's
// SHA-256), not by ignoring certificate errors: KENNEL_SPKI_PIN, set by the https test.
const spkiPin = process.env.KENNEL_SPKI_PIN;

// A hard stop, whatever hangs.
setTimeout(() => {
  console.error("chat-e2e: no result within 120 s");
  process.exit(3);
}, 120000).unref();

const pageErrors = [];

async function openPage(browser, who) {
  // One context per user: separate storage, like two people on two machines. Playwright
  // starts Chromium with a fresh temporary --user-data-dir.
  const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on("pageerror", (e) => pageErrors.push(`${who}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(`${who} console: ${m.text()}`);
  });
  await page.goto(url);
  return page;
}

async function login(page, name, room) {
  await page.fill("#name", name);
  await page.fill("#room", String(room));
  await page.click("#login-button");
}

async function joined(page) {
  await page.waitForSelector("body[data-state=chat]");
  return {
    title: await page.textContent("#room-title"),
    whoami: await page.textContent("#whoami"),
    routes: await page.getAttribute("body", "data-routes"),
  };
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function waitMessage(page, text) {
  await page.locator("#messages li.msg", { hasText: text }).first().waitFor();
}

async function messages(page) {
  return page.$$eval("#messages li.msg", (lis) =>
    lis.map((li) => ({
      who: li.querySelector(".who")?.textContent,
      text: li.querySelector(".text")?.textContent,
      mine: li.classList.contains("mine"),
    })),
  );
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    ...(spkiPin ? [`--ignore-certificate-errors-spki-list=${spkiPin}`] : []),
  ],
  timeout: STEP_TIMEOUT * 2,
});
try {
  const alice = await openPage(browser, "alice");
  const bob = await openPage(browser, "bob");
  await login(alice, "alice", 7);
  const aliceJoined = await joined(alice);
  await login(bob, "bob", 7);
  const bobJoined = await joined(bob);

  await say(alice, "hello from alice");
  await waitMessage(bob, "hello from alice");
  await waitMessage(alice, "hello from alice");
  await say(bob, "hi alice, bob here");
  await waitMessage(alice, "hi alice, bob here");
  await waitMessage(bob, "hi alice, bob here");

  // The name "alice" maps to the uid alice holds: a third user is refused with a clear error.
  const mallory = await openPage(browser, "mallory");
  await login(mallory, "alice", 7);
  await mallory.waitForSelector("#error:not([hidden])");
  const duplicate = {
    error: await mallory.textContent("#error"),
    state: await mallory.getAttribute("body", "data-state"),
  };

  mkdirSync(dirname(shot), { recursive: true });
  await bob.screenshot({ path: shot, fullPage: true });
  await alice.screenshot({ path: shot.replace(/\.png$/, "-alice.png"), fullPage: true });
  const bobMessages = await messages(bob);
  const aliceMessages = await messages(alice);

  // Leave and come back: the handshake now uses the cached route list (md5 match).
  await alice.click("#leave");
  await alice.waitForSelector("body[data-state=login]");
  await login(alice, "alice", 7);
  const aliceAgain = await joined(alice);

  console.log(
    JSON.stringify({
      aliceJoined,
      bobJoined,
      aliceMessages,
      bobMessages,
      duplicate,
      aliceAgain,
      pageErrors,
    }),
  );
} finally {
  await browser.close();
}
