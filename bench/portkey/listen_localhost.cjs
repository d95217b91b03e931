// Preloaded (node --require) into the Portkey gateway by bench/run.sh
// (BENCH_PORTKEY=1). The gateway's CLI (build/start-server.js) takes --port=N
// but no host: @hono/node-server calls server.listen(port, undefined, cb),
// which binds every interface. This makes a listen() on a port with no host
// bind 127.0.0.1 (or BENCH_LISTEN_HOST), as everything the benchmark starts
// does. It changes nothing else in the process.
"use strict";
const net = require("net");
const host = process.env.BENCH_LISTEN_HOST || "127.0.0.1";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  if (typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port))) {
    if (args.length < 2 || args[1] === undefined || args[1] === null) args[1] = host;
    else if (typeof args[1] === "function") args.splice(1, 0, host);
  }
  return listen.apply(this, args);
};
