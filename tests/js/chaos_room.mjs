// The JavaScript client under faults, for tests/chaos/: `clients` clients join one room and
// each sends `count` messages, while the test misbehaves on the server side (it starts once
// this prints "sending"). Prints, last, one JSON line: what each client sent and saw.
//
//   node tests/js/chaos_room.mjs '{"url": "ws://...", "http": "http://...", "room": "r",
//                                  "clients": 3, "count": 200, "options": {...}}'
import WebSocket from "ws";

import { connect } from "../../handler/web/wschat.mjs";

const config = JSON.parse(process.argv[2]);
const { url, http, room, clients, count, options = {}, timeoutMs = 90000 } = config;
const deadline = Date.now() + timeoutMs;

async function until(what, check) {
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function latest() {
  const response = await fetch(`${http}/rooms/${encodeURIComponent(room)}/messages?limit=1`, {
    headers: { Authorization: "Bearer chaos-reader" },
  });
  return response.ok ? (await response.json()).latest_id : -1;
}

const base = { WebSocket, window: null, document: null, minDelay: 50, maxDelay: 1000, ...options };
const runs = [];
for (let c = 0; c < clients; c += 1) {
  const name = `c${c}`;
  const client = connect({ ...base, url, room, token: name });
  const run = { name, client, events: [], acks: [], failures: [] };
  client.on("message", (m) => run.events.push({ type: "message", id: m.id, text: m.text }));
  client.on("discontinuity", (d) => run.events.push({ type: "discontinuity", ...d }));
  runs.push(run);
}

try {
  await until("every client open", () => runs.every((run) => run.client.state === "open"));
  console.log("sending");
  const sends = runs.flatMap((run) =>
    Array.from({ length: count }, (_, n) =>
      run.client.send(`${run.name}-${n}`).then(
        (m) => run.acks.push({ id: m.id, text: m.text, client_msg_id: m.client_msg_id }),
        (error) => run.failures.push(`${error.code}: ${error.message}`),
      ),
    ),
  );
  let expire;
  const expired = new Promise((_, reject) => {
    expire = setTimeout(() => reject(new Error("timed out: every send answered")), timeoutMs);
  });
  await Promise.race([Promise.all(sends), expired]);
  clearTimeout(expire);
  // Every client has handed over all the room holds (or was told it is gone).
  const last = await latest();
  await until("every client caught up", () =>
    runs.every((run) => run.client.state === "open" && run.client.resumePoint >= last),
  );
  console.log(
    JSON.stringify(
      runs.map(({ name, events, acks, failures }) => ({ name, events, acks, failures })),
    ),
  );
} finally {
  for (const run of runs) run.client.close();
}
