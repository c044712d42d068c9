// Start gate: a program the orchestrator starts that nobody reaches before it can answer, on any host.
//
// Run by the opencode binary itself as the Bun runtime (BUN_BE_BUN=1, see opencode-gate and
// openwork-server-gate), so the image gains this file and two small scripts, nothing else. The
// orchestrator (openwork 0.18) starts `opencode-gate serve --hostname H --port P ...` in place of
// opencode, and `openwork-server-gate --host H --port P ...` in place of openwork-server; the gate
// (OPENWORK_GATE_PROGRAM says which of the two it fronts):
//   1. listens on H:P AT ONCE, and starts the program with the same arguments but on a free
//      internal port;
//   2. probes the program (opencode: GET /global/health, openwork-server: GET /health) until it
//      answers anything at all. opencode 1.17 calls listen() before it attaches its HTTP handler,
//      and a request that connects in that gap is read and never answered (orchestrator 0.18
//      waits for such a request forever). A new probe goes out every PROBE_EVERY_MS (growing to
//      PROBE_EVERY_MAX_MS while many are open) without waiting; the first answer wins, and probes
//      sent earlier that are still unanswered were dropped: they are counted and closed. At most
//      MAX_PENDING are open: the oldest is closed for a new one, as that gap lasts long on a slow host;
//   3. meanwhile every connection to H:P is accepted and HELD (what it sends is kept), and once the
//      program answers, it and every later connection is forwarded byte for byte.
// Why 1 and 3: the orchestrator gives each program a fixed 10 s to become healthy, but its health
// request has no timeout of its own and its loop only checks the clock between requests. A request
// that is held simply waits, however slow the host (a throttled container, a busy CI runner, a
// microVM under emulation), and the deadline is the one `up` sets (OPENWORK_HEALTH_TIMEOUT).
// While it waits the gate prints a GATE_MARK line every PROGRESS_EVERY_MS in which the program used
// CPU (`up` reads those as progress: a slow start is not restarted); a program that uses no CPU
// prints nothing, and `up` restarts a start that says nothing for long. When the program answers
// the gate prints one line with how long it took (lifecycle.py / start_gate.py read it).
// SIGTERM/SIGINT/SIGHUP go to the program; the gate exits with the program's exit status.
//
// Under openwork-server (OPENWORK_LAUNCH=server: the server starts opencode and reads where it
// listens from opencode's "opencode server listening on URL" line, in a window of its own, 15 s in
// 0.17/0.18) opencode-gate hands this gate the server's pipe as OPENWORK_GATE_ANNOUNCE_FD, and the
// sandbox's log as stdout and stderr. The gate writes that line, naming H:P, to the pipe once opencode
// answers, or after ANNOUNCE_BY_MS at the latest (later requests are held as above), then closes it.
// When opencode then dies on its own, the gate stops the server (SIGTERM to its parent) so that the
// supervisor starts both again, as it does when the orchestrator shuts down (the server alone would
// serve on with no agent).
//
// Only H:P faces the network: the program's internal port, the gate's probes and its forwards are
// on 127.0.0.1 whatever H is (H is 0.0.0.0 when clients are remote).
//
// TLS (openwork-server only, OPENWORK_TLS=1 with OPENWORK_TLS_CERT_FILE and OPENWORK_TLS_KEY_FILE,
// PEM files; the key never in the environment): H:P then speaks TLS to whoever is not this machine.
// The first byte of each connection decides: 0x16 (a TLS ClientHello) goes, byte for byte, to a TLS
// terminator on 127.0.0.1 whose decrypted connections are held and forwarded as above; anything
// else is served as plain HTTP only when the peer's address is loopback (the orchestrator's checks,
// the image's HEALTHCHECK and openwork-supervise probe http://127.0.0.1:P), else closed unanswered.
// A cert or key that cannot be read ends the gate at once (exit 1): never plain HTTP instead.
"use strict";

const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const tls = require("node:tls");
const { spawn } = require("node:child_process");

const PROBE_EVERY_MS = 40;
// While MAX_PENDING probes are open, each waits a little longer than the last, up to this: the window
// of open probes then spans 25 s, longer than any healthy answer takes on a slow host
const PROBE_EVERY_MAX_MS = 500;
const PROBE_SLOWER = 1.05;
// Probes read in the gap between opencode's listen() and its handler stay open, unanswered: a gate
// that stopped probing at MAX_PENDING of them never saw opencode answer where that gap outlasted 50
// probes (2 s). In a nested microVM under emulation about one start in three hung for good, most
// likely so: opencode idle at 2% of the CPU for 30 minutes, its gate still "starting".
const MAX_PENDING = 50;
const PROGRESS_EVERY_MS = 5000;
const LOOPBACK = "127.0.0.1"; // the program's internal port and every connection to it
const FIRST_BYTE_MS = 30000; // with TLS: a connection that sends nothing for this long is closed
const REFUSED_NOTE_EVERY_MS = 60000; // with TLS: at most one line this often about plain HTTP refused
const DEBUG = Boolean(process.env.OPENWORK_OPENCODE_GATE_DEBUG);
const ANNOUNCE_BY_MS = 10000; // under openwork-server: its window for opencode's line is 15 s
const ANNOUNCE_FD = Number(process.env.OPENWORK_GATE_ANNOUNCE_FD) || null; // the server's pipe (see above)

// What each program is called with and how it is probed. `real`: the program to start.
const PROGRAMS = {
  opencode: {
    hostFlag: "--hostname",
    defaultPort: 4096,
    probePath: "/global/health",
    real: (env) => env.OPENWORK_OPENCODE_REAL || process.execPath, // set by opencode-gate
    auth: (env) => {
      const user = env.OPENCODE_SERVER_USERNAME || "opencode";
      return env.OPENCODE_SERVER_PASSWORD
        ? `Authorization: Basic ${Buffer.from(`${user}:${env.OPENCODE_SERVER_PASSWORD}`).toString("base64")}\r\n`
        : "";
    },
  },
  "openwork-server": {
    hostFlag: "--host",
    defaultPort: 8787,
    probePath: "/health",
    real: (env) => env.OPENWORK_SERVER_REAL || "/usr/local/bin/openwork-server",
    auth: () => "",
  },
};
const NAME = process.env.OPENWORK_GATE_PROGRAM || "opencode";
const GATE_MARK = `${NAME}-gate:`; // "opencode-gate:" / "openwork-server-gate:"

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

// CPU seconds a process and its reaped children used (Linux /proc), or null where unknown.
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] || 0), 0); // utime stime cutime cstime
    return ticks / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

// Resolves with the number of probes the program read and dropped before it answered one.
function untilAnswering(host, port, path, auth, started) {
  const request = `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\n${auth}Connection: close\r\n\r\n`;
  return new Promise((resolve) => {
    const pending = new Set(); // in the order sent: the first is the oldest
    let done = false;
    let timer = null;
    let every = PROBE_EVERY_MS;
    let closedUnanswered = 0; // probes sent and closed for newer ones: dropped too
    const launch = () => {
      if (done) return;
      if (pending.size >= MAX_PENDING) { // (refused probes close at once: only a long gap fills it)
        every = Math.min(every * PROBE_SLOWER, PROBE_EVERY_MAX_MS);
        const oldest = pending.values().next().value;
        pending.delete(oldest);
        if (oldest.sentAt !== null) closedUnanswered += 1;
        oldest.sock.destroy();
      }
      timer = setTimeout(launch, every);
      const p = { sentAt: null, sock: net.connect({ host, port }) };
      pending.add(p);
      p.sock.once("connect", () => {
        p.sentAt = Date.now();
        p.sock.write(request);
      });
      p.sock.once("data", () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        let dropped = closedUnanswered;
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
    launch();
  });
}

// Byte for byte, both ways; `early` holds what the client sent while it was held. One difference
// from the program itself: Bun 1.3's node:net closes a socket once its peer half-closes
// (allowHalfOpen is not honoured), so a client that shuts down its sending side before the answer
// gets none. The orchestrator and openwork-server never do that.
function forward(client, host, port, early, answered = null) {
  const upstream = net.connect({ host, port });
  let told = !answered;
  const tell = () => {
    if (told) return;
    told = true;
    answered();
  };
  upstream.once("data", tell); // answered (or gone, below): the gate's progress lines can stop
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  for (const chunk of early) upstream.write(chunk);
  client.pipe(upstream);
  upstream.pipe(client);
  client.resume();
  const close = () => {
    tell();
    client.destroy();
    upstream.destroy();
  };
  for (const s of [client, upstream]) {
    s.on("error", close);
    s.on("close", close);
  }
}

// A connection made before the program answers: keep what it sends (after `early`, what was read
// already), until release() forwards it.
function hold(client, held, early = []) {
  const entry = { client, early: early.slice(), gone: false };
  const keep = (chunk) => entry.early.push(chunk);
  client.on("data", keep);
  client.resume();
  const drop = () => {
    entry.gone = true;
    held.delete(entry);
    client.destroy();
  };
  client.once("error", drop);
  client.once("close", drop);
  entry.release = (host, port, answered) => {
    client.removeListener("data", keep);
    client.removeListener("error", drop);
    client.removeListener("close", drop);
    client.pause();
    forward(client, host, port, entry.early, answered);
  };
  held.add(entry);
}

// The peer is this machine: 127.0.0.0/8, ::1, or either as an IPv4-mapped IPv6 address.
function isLoopback(address) {
  const a = String(address || "").replace(/^::ffff:/i, "");
  return a === "::1" || /^127\./.test(a);
}

// The cert and key (PEM) when OPENWORK_TLS asks for TLS in front of this program, else null; exits
// (1) when they are asked for and cannot be read or used.
function tlsOptions(env) {
  if (NAME !== "openwork-server" || !/^(1|true|yes|on)$/i.test(env.OPENWORK_TLS || "")) return null;
  const files = { cert: env.OPENWORK_TLS_CERT_FILE, key: env.OPENWORK_TLS_KEY_FILE };
  const options = { minVersion: "TLSv1.2" };
  for (const [what, file] of Object.entries(files)) {
    try {
      if (!file) throw new Error(`OPENWORK_TLS_${what.toUpperCase()}_FILE is not set`);
      options[what] = fs.readFileSync(file);
    } catch (err) {
      say(`TLS asked for (OPENWORK_TLS=1) but the ${what} cannot be read: ${err.message}; not serving`);
      process.exit(1);
    }
  }
  try {
    tls.createSecureContext(options);
  } catch (err) {
    say(`TLS asked for (OPENWORK_TLS=1) but the certificate and key cannot be used: ${err.message}; not serving`);
    process.exit(1);
  }
  return options;
}

// The TLS terminator on 127.0.0.1: resolves with its port; each decrypted connection goes to accept().
function terminator(options, accept) {
  return new Promise((resolve, reject) => {
    const s = tls.createServer(options, (secure) => accept(secure, []));
    s.on("tlsClientError", () => {}); // a client that does not trust the certificate: its own business
    s.once("error", reject);
    s.listen(0, LOOPBACK, () => resolve(s.address().port));
  });
}

// With TLS: route each connection to H:P by its first byte (see the head of this file).
function sniffer(tlsPort, accept) {
  let refused = 0;
  let noted = 0;
  return (client) => {
    const timer = setTimeout(() => client.destroy(), FIRST_BYTE_MS);
    const drop = () => {
      clearTimeout(timer);
      client.destroy();
    };
    client.once("error", drop);
    client.once("close", drop);
    client.once("data", (first) => {
      clearTimeout(timer);
      client.pause();
      client.removeListener("error", drop);
      client.removeListener("close", drop);
      if (first[0] === 0x16) return forward(client, LOOPBACK, tlsPort, [first]);
      if (isLoopback(client.remoteAddress)) return accept(client, [first]);
      client.destroy(); // plain HTTP from beyond this machine: nothing is served, not even an error
      refused += 1;
      if (Date.now() - noted >= REFUSED_NOTE_EVERY_MS) {
        noted = Date.now();
        say(`closed ${refused} plain-HTTP connection(s) from beyond loopback (last from ${client.remoteAddress}): this port speaks TLS`);
        refused = 0;
      }
    });
  };
}

async function main() {
  const program = PROGRAMS[NAME];
  if (!program) {
    say(`unknown OPENWORK_GATE_PROGRAM ${NAME} (expected ${Object.keys(PROGRAMS).join(" or ")})`);
    process.exit(2);
  }
  const args = process.argv.slice(2);
  const [hostAt, hostValue] = option(args, program.hostFlag);
  const [portAt, portValue] = option(args, "--port");
  const host = hostValue || LOOPBACK;
  const publicPort = Number(portValue || program.defaultPort);
  const secure = tlsOptions(process.env);

  // 1. the requested port first, so the orchestrator's health request is held, never refused
  let ready = null; // the internal port once the program answers
  const held = new Set();
  const accept = (client, early) => {
    if (ready !== null) forward(client, LOOPBACK, ready, early);
    else hold(client, held, early);
  };
  const tlsPort = secure ? await terminator(secure, accept) : null;
  const server = net.createServer(secure ? sniffer(tlsPort, accept) : (client) => accept(client, []));
  const listening = new Promise((resolve) => {
    server.once("error", (err) => {
      say(`cannot listen on ${host}:${publicPort}: ${err.code ? `${err.code}: ` : ""}${err.message}`);
      process.exit(1);
    });
    server.listen(publicPort, host, resolve);
  });
  await listening;

  const internalPort = await freePort(LOOPBACK);
  const childArgs = args.slice();
  if (hostAt >= 0 && childArgs[hostAt].includes("=")) childArgs[hostAt] = `${program.hostFlag}=${LOOPBACK}`;
  else if (hostAt >= 0) childArgs[hostAt + 1] = LOOPBACK;
  else childArgs.push(program.hostFlag, LOOPBACK);
  if (portAt >= 0) childArgs.splice(portAt, childArgs[portAt].includes("=") ? 1 : 2);
  childArgs.push("--port", String(internalPort));

  const env = { ...process.env };
  delete env.BUN_BE_BUN;
  delete env.BUN_JSC_useJIT; // the gate's own (its wrapper sets it): the program keeps its JIT
  delete env.OPENWORK_GATE_ANNOUNCE_FD;
  const real = program.real(env);
  if (NAME === "opencode") delete env.OPENWORK_OPENCODE_REAL; // the server's gate leaves it: under
  delete env.OPENWORK_SERVER_REAL; // OPENWORK_LAUNCH=server the server starts opencode-gate, which reads it
  delete env.OPENWORK_GATE_PROGRAM;
  for (const name of ["OPENWORK_TLS", "OPENWORK_TLS_CERT_FILE", "OPENWORK_TLS_KEY_FILE"]) delete env[name];
  const started = Date.now();
  const child = spawn(real, childArgs, { stdio: ["ignore", "inherit", "inherit"], env });
  let stopping = false;
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(sig, () => {
      stopping = true;
      try {
        child.kill(sig);
      } catch {}
    });
  }
  // under openwork-server: where opencode listens, on the server's pipe (see the head of this file)
  let announced = ANNOUNCE_FD === null;
  const announce = () => {
    if (announced) return;
    announced = true;
    try {
      fs.writeSync(ANNOUNCE_FD, `opencode server listening on http://${host}:${publicPort}\n`);
      fs.closeSync(ANNOUNCE_FD);
    } catch (err) {
      say(`cannot tell openwork-server where opencode listens: ${err.message}`);
    }
  };
  if (!announced) setTimeout(announce, ANNOUNCE_BY_MS).unref();
  // openwork-server that starts opencode itself says why it ended on its stderr, after opencode-gate's
  // line: a line here would take their place as the supervisor's "last error"
  const quiet = NAME === "openwork-server" && env.OPENWORK_MANAGE_OPENCODE === "1";
  child.on("exit", (code, signal) => {
    if (!stopping && ready === null && !quiet) say(`${NAME} exited before it answered (${signal || code})`);
    else if (!stopping && ANNOUNCE_FD !== null) {
      say(`${NAME} exited (${signal || code}): stopping openwork-server so that the supervisor starts both again`);
      try {
        process.kill(process.ppid, "SIGTERM");
      } catch {}
    }
    process.exit(code ?? 128 + (os.constants.signals[signal] || 1));
  });
  child.on("error", (err) => {
    say(`cannot start ${NAME}: ${err.message}`);
    process.exit(127);
  });

  // progress while it starts, and until the requests held meanwhile are answered (opencode does
  // its first real work on the first request): a line every PROGRESS_EVERY_MS in which the
  // program used CPU
  let lastCpu = 0;
  let unanswered = 0; // held requests passed on and not answered yet
  const progress = setInterval(() => {
    const cpu = child.pid ? cpuSeconds(child.pid) : null;
    if (cpu !== null && cpu <= lastCpu) return; // no CPU used: say nothing (a stuck start stays silent)
    if (cpu !== null) lastCpu = cpu;
    const used = cpu !== null ? `, ${cpu.toFixed(1)} s of CPU so far` : "";
    const after = `${((Date.now() - started) / 1000).toFixed(0)} s${used}`;
    if (ready === null) {
      const waiting = held.size ? `; ${held.size} request(s) held until it answers` : "";
      say(`${NAME} still starting after ${after}${waiting}`);
    } else {
      say(`${NAME} still answering its first request(s) after ${after}`);
    }
  }, PROGRESS_EVERY_MS);

  const dropped = await untilAnswering(LOOPBACK, internalPort, program.probePath, program.auth(env), started);
  ready = internalPort;
  const released = held.size;
  const answered = () => {
    unanswered -= 1;
    if (unanswered <= 0) clearInterval(progress);
  };
  for (const entry of [...held]) {
    held.delete(entry);
    unanswered += 1;
    entry.release(LOOPBACK, internalPort, answered);
  }
  if (!unanswered) clearInterval(progress);
  announce();
  const ms = Date.now() - started;
  const race = dropped
    ? `start race held off: ${NAME} dropped ${dropped} request(s) sent before its handler was attached; `
    : "";
  const cpu = child.pid ? cpuSeconds(child.pid) : null;
  say(`${race}${NAME} answered after ${ms} ms${cpu !== null ? ` (${cpu.toFixed(1)} s of CPU)` : ""}; ` +
      `serving ${host}:${publicPort}${secure ? " (TLS beyond loopback)" : ""} ` +
      `(${NAME} on ${LOOPBACK} port ${internalPort}${released ? `, ${released} held request(s) passed on` : ""})`);
}

main().catch((err) => {
  say(`failed: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
