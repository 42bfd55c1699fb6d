// A join storm with the JavaScript client, in Node with the `ws` package: run by
// tests/contract/test_storm.py on each topology, alongside Python clients in the same room.
//
//   node tests/js/storm_room.mjs '{"urls": ["ws://..."], "room": "r", "clients": 10, "quietMs": 1000}'
//
// `clients` clients join the room at once (spread over the servers). Once all are open it
// prints `open`; once a line comes on stdin (everyone else is open too) and no `presence` frame
// has come for `quietMs`, it prints each one's `count` as JSON, and leaves.
import { createInterface } from "node:readline";

import WebSocket from "ws";

import { connect } from "../../handler/web/wschat.mjs";

const { urls, room, clients, quietMs, timeoutMs = 30000 } = JSON.parse(process.argv[2]);
const fast = { minDelay: 50, maxDelay: 500, WebSocket, window: null, document: null };
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const rooms = [];
let heard = 0;
for (let n = 0; n < clients; n += 1) {
  const client = connect({ ...fast, url: urls[n % urls.length], room, token: `js${n}` });
  client.on("presence", () => (heard += 1));
  rooms.push(client);
}
const started = Date.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
try {
  while (!rooms.every((client) => client.state === "open")) {
    if (Date.now() - started > timeoutMs) throw new Error("timed out: all open");
    await sleep(10);
  }
  console.log("open");
  await lines.next();
  for (;;) {
    const before = heard;
    await sleep(quietMs);
    if (heard === before) break;
    if (Date.now() - started > timeoutMs) throw new Error("timed out: the room never went quiet");
  }
  console.log(JSON.stringify({ counts: rooms.map((client) => client.count) }));
} finally {
  for (const client of rooms) client.close();
  process.stdin.destroy();
}
