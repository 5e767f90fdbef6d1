// A Node.js HTTP server that streams (for test_probes_s11_h2): GET /stream?n=N writes
// "line I\n" every 10 ms (setInterval), GET /big?n=N writes N bytes of a pattern in
// 64 KiB pieces, waiting for 'drain' whenever write() says the socket is full; / the
// count of requests served.  argv: OUT PORT.  Reports "port N".
const http = require("http");
const fs = require("fs");
const out = process.argv[2];
const PATTERN = Buffer.alloc(256 * 4099);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = i % 256;
let served = 0;
http.createServer({ keepAliveTimeout: 300000 }, (req, res) => {
  served++;
  const u = new URL(req.url, "http://x");
  const n = parseInt(u.searchParams.get("n") || "0", 10);
  if (u.pathname === "/stream") {
    let i = 0;
    const t = setInterval(() => {
      res.write(`line ${i}\n`);
      if (++i === n) { clearInterval(t); res.end(); }
    }, 10);
  } else if (u.pathname === "/big") {
    res.setHeader("Content-Length", n);
    let at = 0;
    const more = () => {
      while (at < n) {
        const len = Math.min(65536, n - at);
        const start = at % PATTERN.length;
        let piece = PATTERN.subarray(start, start + len);
        if (piece.length < len) piece = Buffer.concat([piece, PATTERN.subarray(0, len - piece.length)]);
        at += len;
        if (!res.write(piece)) { res.once("drain", more); return; }
      }
      res.end();
    };
    more();
  } else {
    res.end(`served ${served}\n`);
  }
}).listen(parseInt(process.argv[3], 10), "127.0.0.1", () => {
  fs.appendFileSync(out, `port ${process.argv[3]}\n`);
});
