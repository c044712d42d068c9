// opencode start gate: `opencode serve` that nobody reaches before it can answer.
//
// Run by the opencode binary itself as the Bun runtime (BUN_BE_BUN=1, see opencode-gate), so the
// image gains this file and a 1 KB script, nothing else. The orchestrator starts
// `opencode-gate serve --hostname H --port P ...` in place of opencode; the gate:
//   1. starts opencode (OPENWORK_OPENCODE_REAL, else this very binary) with the same arguments
//      but on a free internal port;
//   2. probes it (GET /global/health) until it answers anything at all. opencode 1.17 calls
//      listen() before it attaches its HTTP handler, and a request that connects in that gap is
//      read and never answered (orchestrator 0.18 waits for such a request forever). A new probe
//      goes out every PROBE_EVERY_MS without waiting; the first answer wins, and probes sent
//      earlier that are still unanswered were dropped: they are counted and closed;
//   3. only then listens on H:P and forwards every connection, byte for byte, to opencode.
// Until 3 the orchestrator's health polls are refused, and it retries them. The gate prints one
// line starting with GATE_MARK when it serves (lifecycle.py reads it from the server log).
// SIGTERM/SIGINT/SIGHUP go to opencode; the gate exits with opencode's exit status.
"use strict";

const net = require("node:net");
const os = require("node:os");
const { spawn } = require("node:child_process");

const GATE_MARK = "opencode-gate:";
const PROBE_EVERY_MS = 40;
const MAX_PENDING = 50;
const DEBUG = Boolean(process.env.OPENWORK_OPENCODE_GATE_DEBUG);

function say(message) {
  process.stdout.write(`${GATE_MARK} ${message}\n`);
}

// [index, value] of `--name value` or `--name=value` in args; [-1, undefined] when absent.
function option(args, name) {
  const i = args.indexOf(name);
  if (i >= 0 && i + 1 < args.length) return [i, args[i + 1]];
  const eq = args.findIndex((a) => a.startsWith(name + "="));
  return eq >= 0 ? [eq, args[eq].slice(name.length + 1)] : [-1, undefined];
}

function freePort(host) {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Resolves with the number of probes opencode read and dropped before it answered one.
function untilAnswering(host, port, auth, started) {
  const request = `GET /global/health HTTP/1.1\r\nHost: ${host}:${port}\r\n${auth}Connection: close\r\n\r\n`;
  return new Promise((resolve) => {
    const pending = new Set();
    let done = false;
    let timer = null;
    const launch = () => {
      if (done || pending.size >= MAX_PENDING) return;
      const p = { sentAt: null, sock: net.connect({ host, port }) };
      pending.add(p);
      p.sock.once("connect", () => {
        p.sentAt = Date.now();
        p.sock.write(request);
      });
      p.sock.once("data", () => {
        if (done) return;
        done = true;
        clearInterval(timer);
        let dropped = 0;
        for (const q of [...pending]) {
          if (q !== p && q.sentAt !== null && q.sentAt < p.sentAt) dropped += 1;
          q.sock.destroy();
        }
        if (DEBUG) say(`answered at ${Date.now() - started} ms, ${dropped} earlier probe(s) unanswered`);
        resolve(dropped);
      });
      const gone = () => {
        pending.delete(p);
        p.sock.destroy();
      };
      p.sock.once("error", gone);
      p.sock.once("close", gone);
    };
    timer = setInterval(launch, PROBE_EVERY_MS);
    launch();
  });
}

// Byte for byte, both ways. One difference from opencode itself: Bun 1.3's node:net closes a
// socket once its peer half-closes (allowHalfOpen is not honoured), so a client that shuts down its
// sending side before the answer gets none. The orchestrator and openwork-server never do that.
function forward(host, port) {
  return (client) => {
    const upstream = net.connect({ host, port });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    client.pipe(upstream);
    upstream.pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on("error", close);
      s.on("close", close);
    }
  };
}

async function main() {
  const args = process.argv.slice(2);
  const [hostAt, hostValue] = option(args, "--hostname");
  const [portAt, portValue] = option(args, "--port");
  const host = hostValue || "127.0.0.1";
  const publicPort = Number(portValue || 4096);
  const internalPort = await freePort(host);
  const childArgs = args.slice();
  if (portAt >= 0) childArgs.splice(portAt, childArgs[portAt].includes("=") ? 1 : 2);
  if (hostAt < 0) childArgs.push("--hostname", host);
  childArgs.push("--port", String(internalPort));

  const env = { ...process.env };
  delete env.BUN_BE_BUN;
  const opencode = env.OPENWORK_OPENCODE_REAL || process.execPath; // set by opencode-gate
  delete env.OPENWORK_OPENCODE_REAL;
  const started = Date.now();
  const child = spawn(opencode, childArgs, { stdio: ["ignore", "inherit", "inherit"], env });
  let stopping = false;
  let serving = false;
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(sig, () => {
      stopping = true;
      try {
        child.kill(sig);
      } catch {}
    });
  }
  child.on("exit", (code, signal) => {
    if (!stopping && !serving) say(`opencode exited before it answered (${signal || code})`);
    process.exit(code ?? 128 + (os.constants.signals[signal] || 1));
  });
  child.on("error", (err) => {
    say(`cannot start opencode: ${err.message}`);
    process.exit(127);
  });

  const user = env.OPENCODE_SERVER_USERNAME || "opencode";
  const auth = env.OPENCODE_SERVER_PASSWORD
    ? `Authorization: Basic ${Buffer.from(`${user}:${env.OPENCODE_SERVER_PASSWORD}`).toString("base64")}\r\n`
    : "";
  const dropped = await untilAnswering(host, internalPort, auth, started);

  const server = net.createServer(forward(host, internalPort));
  server.on("error", (err) => {
    say(`cannot listen on ${host}:${publicPort}: ${err.message}`);
    stopping = true;
    child.kill("SIGTERM");
  });
  server.listen(publicPort, host, () => {
    serving = true;
    const ms = Date.now() - started;
    const race = dropped
      ? `start race held off: opencode dropped ${dropped} request(s) sent before its handler was attached; `
      : "";
    say(`${race}opencode answered after ${ms} ms; serving ${host}:${publicPort} (opencode on port ${internalPort})`);
  });
}

main().catch((err) => {
  say(`failed: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
