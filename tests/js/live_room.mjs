// The JavaScript client against a real server, in Node with the `ws` package: run by
// tests/contract/test_js_client.py on each topology, which checks what this prints.
//
//   node tests/js/live_room.mjs '{"urls": ["ws://..."], "room": "r", "count": 50}'
//
// Two clients join the room (on Redis, through different servers). Alice sends `count`
// messages while both her socket and Bob's are cut once mid-way; then Bob scrolls back,
// lists the members and sees Alice typing. It prints one JSON object: what each side saw.
import WebSocket from "ws";

import { connect } from "../../handler/web/wschat.mjs";

const { urls, room, count, options = {}, timeoutMs = 20000 } = JSON.parse(process.argv[2]);
const fast = { minDelay: 50, maxDelay: 500, WebSocket, window: null, document: null, ...options };

function until(what, check) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out: ${what}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

function cut(client) {
  client._socket?.terminate(); // the link drops without a close frame, as a network does
}

const alice = connect({ ...fast, url: urls[0], room, token: "alice" });
const bob = connect({ ...fast, url: urls.at(-1), room, token: "bob" });
const seen = { alice: [], bob: [], discontinuities: 0, states: [], typing: [] };
alice.on("message", (m) => seen.alice.push(m.id));
bob.on("message", (m) => seen.bob.push(m.id));
bob.on("typing", (t) => seen.typing.push(t.user.name));
for (const client of [alice, bob]) client.on("discontinuity", () => (seen.discontinuities += 1));
bob.on("state", (s) => seen.states.push(s.state));

try {
  await until("both open", () => alice.state === "open" && bob.state === "open");
  const sends = [];
  for (let n = 0; n < count; n += 1) {
    sends.push(alice.send(`m${n}`));
    if (n === Math.floor(count / 3)) cut(bob);
    if (n === Math.floor((2 * count) / 3)) cut(alice);
    if (n % 10 === 9) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const stored = await Promise.all(sends);
  await until("bob has them all", () => seen.bob.length >= count);
  await until("alice has them all", () => seen.alice.length >= count);
  const ids = stored.map((m) => m.id);
  const older = await bob.history({ before: ids[5], limit: 3 });
  const members = await bob.members();
  alice._lastTyping = -Infinity; // as if her last key press were long ago
  alice.typing();
  await until("bob sees alice typing", () => seen.typing.length > 0);
  console.log(
    JSON.stringify({
      acked: ids,
      texts: stored.map((m) => m.text),
      alice: seen.alice,
      bob: seen.bob,
      discontinuities: seen.discontinuities,
      bobReconnected: seen.states.includes("reconnecting"),
      older: older.map((m) => m.id),
      members: members.members.map((m) => m.name).sort(),
      count: members.count,
      typing: seen.typing,
      aliceName: alice.user.name,
    }),
  );
} finally {
  alice.close();
  bob.close();
}
