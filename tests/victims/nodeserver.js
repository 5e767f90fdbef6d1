// A Node.js service: an HTTP server on loopback (libuv's epoll loop), a worker thread
// (worker_threads: a second V8 isolate) that sums each block the main thread posts
// and posts the sum back, a 4 MiB Buffer checked every round, timers and the GC.  It
// reports "port N" once, then "ok N" per good round or "FAIL ..."; GET / answers the
// number of rounds, which only grows.
const fs = require("fs");
const http = require("http");
const { Worker } = require("worker_threads");
const out = fs.openSync(process.argv[2], "a");
const say = (s) => fs.writeSync(out, s + "\n");
const buf = Buffer.alloc(4 << 20);
for (let i = 0; i < buf.length; i++) buf[i] = (i * 31) & 255;
let rounds = 0;
const server = http.createServer((req, res) => res.end(`rounds ${rounds}\n`));
server.listen(0, "127.0.0.1", () => say(`port ${server.address().port}`));
const worker = new Worker(`
  const { parentPort } = require("worker_threads");
  parentPort.on("message", (a) => {
    let s = 0;
    for (const x of a) s = (s + x) % 1000003;
    parentPort.postMessage(s);
  });`, { eval: true });
let expect = null;
worker.on("message", (s) => {
  if (s !== expect) say(`FAIL worker sum ${s} not ${expect}`);
  expect = null;
});
let n = 0;
setInterval(() => {
  let bad = 0;
  for (let i = 0; i < buf.length; i += 4093) if (buf[i] !== ((i * 31) & 255)) bad++;
  if (expect !== null) bad++;  // the worker did not answer the last round
  const a = Array.from({ length: 1000 }, (_, k) => (n * 1000 + k) % 65536);
  expect = a.reduce((s, x) => (s + x) % 1000003, 0);
  worker.postMessage(a);
  rounds++;
  say(bad ? `FAIL round ${n}: ${bad}` : `ok ${n}`);
  n++;
}, 100);
