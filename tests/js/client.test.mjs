// The JavaScript client's unit tests, on a fake clock and sockets the test drives (node's
// test runner: `node --test tests/js`, run by `make test`). What it does against real
// servers is in tests/client/ (Node and Chromium).
import assert from "node:assert/strict";
import { test } from "node:test";

import { claimsOf, connect, DEFAULTS, describePresence } from "../../handler/web/wschat.mjs";
import { FakeClock, jwt, message, settle, socketClass } from "./fakes.mjs";

function start(options = {}) {
  const clock = new FakeClock();
  const WebSocket = socketClass();
  const room = connect({
    url: "ws://chat.test",
    room: "r",
    token: "tok",
    WebSocket,
    timers: clock,
    window: new EventTarget(),
    document: Object.assign(new EventTarget(), { visibilityState: "visible" }),
    ...options,
  });
  const seen = { message: [], state: [], discontinuity: [], error: [], typing: [] };
  for (const type of Object.keys(seen)) room.on(type, (event) => seen[type].push(event));
  return { room, clock, sockets: WebSocket.sockets, seen, options };
}

async function opened(options = {}) {
  const started = start(options);
  await settle();
  started.sockets[0].welcome();
  return started;
}

const ids = (messages) => messages.map((m) => m.id);

test("the socket names the room, the JSON dialect and the token as a subprotocol", async () => {
  const { sockets } = start();
  await settle();
  const [socket] = sockets;
  assert.equal(socket.url.pathname, "/items/r/ws");
  assert.equal(socket.url.searchParams.get("format"), "json");
  assert.equal(socket.url.searchParams.get("token"), null); // never in a URL
  assert.deepEqual(socket.protocols, ["wschat.json", "bearer", "tok"]);
});

test("on API Gateway the room and the token go in the query", async () => {
  const { sockets } = start({ url: "wss://abc.execute-api.test/prod", room: "a b" });
  await settle();
  const { url } = sockets[0];
  assert.equal(url.pathname, "/prod");
  assert.equal(url.searchParams.get("room"), "a b");
  assert.equal(url.searchParams.get("token"), "tok");
});

test("presence diffs and a big room's count alone both reach the app and set the count", async () => {
  const { room, sockets } = await opened();
  const heard = [];
  room.on("presence", (event) => heard.push(event));
  const alice = { id: "a", name: "alice" };
  sockets[0].receive({ type: "presence", room: "r", joins: [alice], leaves: [], count: 2 });
  assert.equal(room.count, 2);
  sockets[0].receive({ type: "presence", room: "r", count: 250 });
  assert.equal(room.count, 250);
  assert.deepEqual(heard.map(describePresence), ["alice joined (2 here)", "250 here"]);
  const batch = { joins: [alice, { name: "bob" }], leaves: [{ name: "carol" }], count: 3 };
  assert.equal(describePresence(batch), "alice, bob joined; carol left (3 here)");
});

test("on Lambda, frames out of order leave the count with the highest presence_seq", async () => {
  // Concurrent $connects announce their joins at once: a member gets them in any order, each
  // count numbered by the change it was read after (measured: welcome 5, then 4, 3, 5, 2).
  const { room, sockets, clock } = start();
  await settle();
  const heard = [];
  room.on("presence", (event) => heard.push(event));
  const [socket] = sockets;
  socket.welcome({ count: 5, presence_seq: 5 });
  const join = (n, count) => ({ type: "presence", room: "r", joins: [{ id: `u${n}`, name: `u${n}` }], leaves: [], count, presence_seq: n });
  for (const [n, count] of [[4, 4], [3, 3], [7, 7], [2, 2], [6, 6]]) socket.receive(join(n, count));
  assert.equal(room.count, 7);
  // Every join reaches the app, each with the room's count as the client keeps it.
  assert.deepEqual(heard.map((p) => [p.joins[0].name, p.count]), [["u4", 5], ["u3", 5], ["u7", 7], ["u2", 7], ["u6", 7]]);
  assert.equal(describePresence(heard[1]), "u3 joined (5 here)");
  socket.receive({ type: "presence", room: "r", count: 6, presence_seq: 6 }); // occupancy, older
  assert.equal(room.count, 7);
  const who = room.members();
  const reply = { type: "members", room: "r", complete: true, more: false, members: [] };
  socket.receive({ ...reply, count: 6, presence_seq: 7 }); // read no later than the 7th change
  assert.equal(room.count, 7);
  assert.equal((await who).count, 6); // the reply as it came
  room.members();
  socket.receive({ ...reply, count: 8, presence_seq: 8 });
  assert.equal(room.count, 8);
  // A new connection's welcome starts over, whatever the old one kept.
  socket.drop(1006);
  await clock.advance(clock.pending().at(-1));
  sockets[1].welcome({ count: 3, presence_seq: 2 });
  assert.equal(room.count, 3);
  // A count without a number (memory, Redis: frames in order) is always kept.
  sockets[1].receive({ type: "presence", room: "r", joins: [], leaves: [{ id: "u2", name: "u2" }], count: 2 });
  assert.equal(room.count, 2);
});

test("backoff has full jitter, doubles from 0.5 s to 20 s, and never gives up", async () => {
  const { clock, sockets, seen } = start();
  await settle();
  const delays = [];
  for (let attempt = 0; attempt < 30; attempt += 1) {
    clock.randoms.push(0.999);
    sockets.at(-1).drop(1006);
    delays.push(seen.state.at(-1).retryIn);
    await clock.advance(seen.state.at(-1).retryIn);
  }
  assert.equal(sockets.length, 31);
  assert.deepEqual(delays.slice(0, 7), [499, 999, 1998, 3996, 7992, 15984, 19980]);
  assert.ok(delays.slice(6).every((delay) => delay === 19980));
  // Full jitter: a retry can come at once, or anywhere up to the cap.
  clock.randoms.push(0);
  sockets.at(-1).drop(1006);
  assert.equal(seen.state.at(-1).retryIn, 0);
  assert.equal(DEFAULTS.maxRetries, Infinity);
});

test("a welcome resets the backoff, and a lost link is 'reconnecting' until the next", async () => {
  const { clock, sockets, seen, room } = await opened();
  assert.equal(room.state, "open");
  clock.randoms.push(0.999, 0.999);
  sockets[0].drop(1012);
  assert.equal(room.state, "reconnecting");
  assert.equal(seen.state.at(-1).retryIn, 499);
  await clock.advance(499);
  sockets[1].drop(1006);
  assert.equal(seen.state.at(-1).retryIn, 999);
  await clock.advance(999);
  sockets[2].welcome();
  assert.equal(room.state, "open");
  clock.randoms.push(0.999);
  sockets[2].drop(1001);
  assert.equal(seen.state.at(-1).retryIn, 499);
});

test("the browser's online event, or the page shown again, reconnects at once", async () => {
  const window = new EventTarget();
  const document = Object.assign(new EventTarget(), { visibilityState: "hidden" });
  const { clock, sockets, room } = await opened({ window, document });
  for (let n = 0; n < 6; n += 1) {
    clock.randoms.push(0.999);
    sockets.at(-1).drop(1006);
    if (n < 5) await clock.advance(clock.pending().at(-1));
  }
  assert.ok(clock.pending().at(-1) > 10000); // a long wait ahead
  const before = sockets.length;
  window.dispatchEvent(new Event("online"));
  await settle();
  assert.equal(sockets.length, before + 1);
  sockets.at(-1).drop(1006);
  assert.ok(clock.pending().at(-1) <= 500); // the backoff starts afresh
  document.dispatchEvent(new Event("visibilitychange")); // still hidden: nothing
  await settle();
  assert.equal(sockets.length, before + 1);
  document.visibilityState = "visible";
  document.dispatchEvent(new Event("visibilitychange"));
  await settle();
  assert.equal(sockets.length, before + 2);
  sockets.at(-1).welcome();
  assert.equal(room.state, "open");
  window.dispatchEvent(new Event("online")); // open: nothing to do
  await settle();
  assert.equal(sockets.length, before + 2);
});

test("never two live sockets: an early wake closes the one in progress", async () => {
  const window = new EventTarget();
  const { sockets } = await opened({ window });
  sockets[0].drop(1006);
  window.dispatchEvent(new Event("online"));
  await settle();
  window.dispatchEvent(new Event("online")); // the new one is still connecting: replaced
  await settle();
  assert.equal(sockets.length, 3);
  assert.deepEqual(sockets[1].closed?.code, 4000);
  sockets[1].drop(1006); // its late close changes nothing
  await settle();
  assert.equal(sockets.length, 3);
});

test("messages reach the app once each, in id order, whatever order they arrive in", async () => {
  const { sockets, seen, room } = await opened();
  const [socket] = sockets;
  for (const id of [1, 3, 2, 2, 1, 5, 4]) socket.receive(message(id));
  assert.deepEqual(ids(seen.message), [1, 2, 3, 4, 5]);
  assert.equal(room.resumePoint, 5);
});

test("a gap not filled soon is asked for, and what is gone is reported", async () => {
  const { clock, sockets, seen } = await opened();
  const [socket] = sockets;
  socket.receive(message(1));
  socket.receive(message(4));
  assert.deepEqual(ids(seen.message), [1]);
  assert.deepEqual(socket.actions("history"), []);
  await clock.advance(DEFAULTS.gapWait);
  assert.deepEqual(socket.actions("history"), [{ action: "history", since: 1 }]);
  // 2 expired; 3 is stored.
  socket.receive({ type: "history", room: "r", latest_id: 4, more: false, messages: [message(3), message(4)] });
  assert.deepEqual(ids(seen.message), [1, 3, 4]);
  assert.deepEqual(seen.discontinuity, [{ reason: "expired", from: 2, to: 2 }]);
});

test("a reconnect resumes from the resume point with the epoch", async () => {
  const { clock, sockets, seen } = await opened();
  sockets[0].receive(message(1));
  sockets[0].receive(message(2));
  sockets[0].receive(message(4)); // 3 is on its way: the resume point is 2
  sockets[0].drop(1012);
  await clock.advance(clock.pending().at(-1));
  const { searchParams } = sockets[1].url;
  assert.equal(searchParams.get("since"), "2");
  assert.equal(searchParams.get("epoch"), "e1");
  sockets[1].welcome({ latest_id: 4, recovered: true, history: [message(3), message(4)] });
  assert.deepEqual(ids(seen.message), [1, 2, 3, 4]);
  assert.deepEqual(seen.discontinuity, []);
});

test("a resume the server cannot honour is a discontinuity, then ids start over", async () => {
  const { clock, sockets, seen, room } = start();
  await settle();
  sockets[0].welcome({ latest_id: 6 });
  sockets[0].receive(message(7));
  sockets[0].drop(1012);
  await clock.advance(clock.pending().at(-1));
  sockets[1].welcome({ epoch: "e2", recovered: false, latest_id: 1, history: [message(1)] });
  assert.deepEqual(seen.discontinuity, [
    { reason: "history_lost", epoch: "e2", previousEpoch: "e1" },
  ]);
  assert.deepEqual(ids(seen.message), [7, 1]);
  assert.equal(room.resumePoint, 1);
});

test("a send is stored exactly once across reconnects: resent with the same id until answered", async () => {
  const { clock, sockets, room } = start();
  const sent = room.send("hello");
  await settle();
  sockets[0].welcome();
  const [first] = sockets[0].actions("sendmessage");
  assert.equal(first.text, "hello");
  sockets[0].drop(1006); // no answer came
  await clock.advance(clock.pending().at(-1));
  sockets[1].welcome();
  const [again] = sockets[1].actions("sendmessage");
  assert.equal(again.client_msg_id, first.client_msg_id);
  const stored = message(1, "hello", { user: { id: "id-me", name: "me" }, client_msg_id: first.client_msg_id });
  sockets[1].receive(stored);
  sockets[1].receive(stored); // the server's answer to a repeat: nothing more
  assert.deepEqual(await sent, stored);
  sockets[1].drop(1006);
  await clock.advance(clock.pending().at(-1));
  sockets[2].welcome({ latest_id: 1 });
  assert.deepEqual(sockets[2].actions("sendmessage"), []);
});

test("a send answered in the resumed history is settled without going again", async () => {
  const { clock, sockets, room } = await opened();
  const sent = room.send("hi");
  const [frame] = sockets[0].actions("sendmessage");
  sockets[0].drop(1006);
  await clock.advance(clock.pending().at(-1));
  const stored = message(1, "hi", { user: { id: "id-me", name: "me" }, client_msg_id: frame.client_msg_id });
  sockets[1].welcome({ latest_id: 1, history: [stored] });
  assert.deepEqual(await sent, stored);
  assert.deepEqual(sockets[1].actions("sendmessage"), []);
});

test("sends reject with the server's code; busy ones go again after a pause", async () => {
  const { clock, sockets, room } = await opened({ inFlight: 8 });
  const refused = room.send("not here");
  const busy = room.send("later");
  const [forbidden, later] = sockets[0].actions("sendmessage");
  sockets[0].receive({ type: "error", code: "forbidden", detail: "no", client_msg_id: forbidden.client_msg_id });
  await assert.rejects(refused, { code: "forbidden" });
  sockets[0].receive({ type: "error", code: "busy", detail: "again", client_msg_id: later.client_msg_id });
  assert.equal(sockets[0].actions("sendmessage").length, 2);
  await clock.advance(DEFAULTS.retryAfterBusy);
  assert.deepEqual(sockets[0].actions("sendmessage")[2], later);
  sockets[0].receive(message(1, "later", { user: { id: "id-me", name: "me" }, client_msg_id: later.client_msg_id }));
  assert.equal((await busy).id, 1);
  await assert.rejects(room.send("   "), { code: "empty_message" });
  await assert.rejects(room.send("x".repeat(40000)), { code: "message_too_large" });
  await assert.rejects(room.send("\ud800"), { code: "bad_request" });
});

test("at most `inFlight` sends await an answer at once", async () => {
  const { sockets, room } = await opened({ inFlight: 2 });
  for (let n = 0; n < 4; n += 1) room.send(`s${n}`);
  const frames = sockets[0].actions("sendmessage");
  assert.deepEqual(frames.map((f) => f.text), ["s0", "s1"]);
  sockets[0].receive(message(1, "s0", { user: { id: "id-me", name: "me" }, client_msg_id: frames[0].client_msg_id }));
  assert.deepEqual(sockets[0].actions("sendmessage").map((f) => f.text), ["s0", "s1", "s2"]);
});

test("the token is refreshed before its exp, and the next one after", async () => {
  const clock = new FakeClock();
  const now = clock.now() / 1000;
  const tokens = [jwt({ sub: "me", iat: now, exp: now + 600 }), jwt({ sub: "me", iat: now + 540, exp: now + 1140 })];
  let asked = 0;
  const getToken = async () => tokens[asked++];
  const { sockets } = start({ token: undefined, getToken, timers: clock, pingAfter: Infinity });
  await settle();
  assert.equal(asked, 1);
  sockets[0].welcome();
  await clock.advance(539_000);
  assert.equal(asked, 1);
  await clock.advance(1000); // 60 s before exp
  assert.equal(asked, 2);
  assert.deepEqual(sockets[0].actions("refresh"), [{ action: "refresh", token: tokens[1] }]);
  sockets[0].receive({ type: "refreshed", expires_at: now + 1140 });
  assert.ok(clock.pending().includes(540_000)); // the next refresh, 60 s before the new exp
});

test("a short-lived token is refreshed a tenth of its lifetime early", () => {
  const claims = claimsOf(jwt({ iat: 100, exp: 200 }));
  assert.deepEqual(claims, { exp: 200, iat: 100 });
  assert.equal(claimsOf("not-a-jwt"), null);
  assert.equal(claimsOf(jwt({ exp: "soon" })), null);
});

test("a token that ran out (4401) is renewed from getToken before reconnecting", async () => {
  let asked = 0;
  const { clock, sockets, room } = start({ token: undefined, getToken: async () => `t${++asked}` });
  await settle();
  sockets[0].welcome();
  sockets[0].receive({ type: "error", code: "token_expired", detail: "credential expired" });
  sockets[0].drop(4401);
  await clock.advance(clock.pending().at(-1));
  assert.equal(asked, 2);
  assert.deepEqual(sockets[1].protocols, ["wschat.json", "bearer", "t2"]);
  assert.equal(room.state, "reconnecting");
});

test("without getToken, a token that ran out closes the room", async () => {
  const { sockets, room, seen } = await opened();
  sockets[0].drop(4401);
  assert.equal(room.state, "closed");
  assert.equal(seen.error.at(-1).code, "token_expired");
});

test("a getToken that throws ends in 'closed' with its error", async () => {
  const { room, seen } = start({
    token: undefined,
    getToken: async () => {
      throw new Error("signed out");
    },
  });
  const pending = room.send("lost");
  await settle();
  assert.equal(room.state, "closed");
  assert.equal(seen.state.at(-1).error.code, "token");
  assert.match(seen.state.at(-1).error.message, /signed out/);
  await assert.rejects(pending, { code: "token" });
});

test("a getToken that throws at refresh time closes the room too", async () => {
  const clock = new FakeClock();
  const now = clock.now() / 1000;
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    if (calls > 1) throw new Error("revoked");
    return jwt({ iat: now, exp: now + 100 });
  };
  const { room, sockets } = start({ token: undefined, getToken, timers: clock });
  await settle();
  sockets[0].welcome();
  await clock.advance(90_000);
  assert.equal(room.state, "closed");
});

test("an idle link is pinged, and one that does not answer is replaced", async () => {
  const { clock, sockets, room } = await opened();
  await clock.advance(DEFAULTS.pingAfter);
  assert.deepEqual(sockets[0].actions("ping"), [{ action: "ping" }]);
  sockets[0].receive({ type: "pong" });
  await clock.advance(DEFAULTS.pongTimeout); // answered: nothing happens
  assert.equal(sockets.length, 1);
  await clock.advance(DEFAULTS.pingAfter - DEFAULTS.pongTimeout);
  assert.equal(sockets[0].actions("ping").length, 2);
  await clock.advance(DEFAULTS.pongTimeout); // silence
  assert.equal(room.state, "reconnecting");
  assert.equal(sockets[0].closed.code, 4000);
  await clock.advance(clock.pending().at(-1));
  assert.equal(sockets.length, 2);
});

test("scrolling back, members and typing", async () => {
  const { clock, sockets, room, seen } = start();
  await settle();
  const [socket] = sockets;
  socket.welcome({ latest_id: 10, history: [message(10)] });
  const older = room.history({ limit: 2 });
  assert.deepEqual(socket.actions("history"), [{ action: "history", before: 10, limit: 2 }]);
  socket.receive({ type: "history", room: "r", latest_id: 10, before: 10, more: true, messages: [message(8)] });
  socket.receive({ type: "history", room: "r", latest_id: 10, before: 10, more: false, messages: [message(9)] });
  assert.deepEqual(ids(await older), [8, 9]);
  room.history();
  assert.deepEqual(socket.actions("history").at(-1), { action: "history", before: 8, limit: 50 });
  const who = room.members();
  const part = { type: "members", room: "r", count: 3, complete: true };
  socket.receive({ ...part, more: true, members: [{ id: "a", name: "a" }] });
  socket.receive({ ...part, more: false, members: [{ id: "b", name: "b" }] });
  assert.deepEqual(await who, { count: 3, complete: true, members: [{ id: "a", name: "a" }, { id: "b", name: "b" }] });
  room.typing();
  room.typing();
  assert.equal(socket.actions("typing").length, 1);
  await clock.advance(DEFAULTS.typingEvery);
  room.typing();
  assert.equal(socket.actions("typing").length, 2);
  socket.receive({ type: "typing", room: "r", user: { id: "x", name: "x" } });
  assert.equal(seen.typing.length, 1);
});

test("requests made while disconnected go out once the room is open", async () => {
  const { clock, sockets, room } = await opened();
  sockets[0].drop(1006);
  const who = room.members();
  await clock.advance(clock.pending().at(-1));
  sockets[1].welcome();
  assert.deepEqual(sockets[1].actions("members"), [{ action: "members" }]);
  sockets[1].receive({ type: "members", room: "r", count: 1, complete: true, more: false, members: [] });
  assert.equal((await who).count, 1);
});

test("close rejects what is unanswered and stops for good", async () => {
  const { clock, sockets, room } = await opened();
  const sent = room.send("bye");
  room.close();
  await assert.rejects(sent, { code: "closed" });
  assert.equal(sockets[0].closed.code, 1000);
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
  await assert.rejects(room.send("after"), { code: "closed" });
});

test("a listener that throws does not stop the client", async () => {
  const { sockets, room } = await opened();
  const errors = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (error) => errors.push(error);
  try {
    room.on("message", () => {
      throw new Error("app bug");
    });
    const got = [];
    room.on("message", (m) => got.push(m.id));
    sockets[0].receive(message(1));
    sockets[0].receive(message(2));
    assert.deepEqual(got, [1, 2]);
    assert.equal(errors.length, 2);
  } finally {
    globalThis.reportError = reportError;
  }
});

test("sends are paced below the server's rate limit", async () => {
  const { clock, sockets, room } = await opened({ inFlight: 100 });
  for (let n = 0; n < 60; n += 1) room.send(`s${n}`);
  assert.equal(sockets[0].actions("sendmessage").length, DEFAULTS.sendBurst);
  await clock.advance(1000);
  const paced = sockets[0].actions("sendmessage").length - DEFAULTS.sendBurst;
  assert.ok(Math.abs(paced - DEFAULTS.sendRate) <= 1, `${paced} sent in the next second`);
});

test("welcomed to an empty room and cut at once, a client resumes from 0", async () => {
  const { clock, sockets, seen } = await opened(); // latest_id 0, nothing yet
  sockets[0].drop(1006);
  await clock.advance(clock.pending().at(-1));
  assert.equal(sockets[1].url.searchParams.get("since"), "0");
  sockets[1].welcome({ latest_id: 2, recovered: true, history: [message(1), message(2)] });
  assert.deepEqual(ids(seen.message), [1, 2]);
  // Without a since, the server would send recent history, and anything older would be
  // skipped; here what the reply lacks is reported instead.
  sockets[1].drop(1006);
  await clock.advance(clock.pending().at(-1));
  sockets[2].welcome({ latest_id: 6, recovered: true, history: [message(5), message(6)] });
  assert.deepEqual(seen.discontinuity, [{ reason: "expired", from: 3, to: 4 }]);
});

test("a socket that opens but never brings a welcome is replaced", async () => {
  const { clock, sockets, room } = start();
  await settle();
  sockets[0].accept();
  await clock.advance(DEFAULTS.welcomeTimeout);
  assert.equal(sockets[0].closed?.code, 4000);
  await clock.advance(clock.pending().at(-1));
  assert.equal(sockets.length, 2);
  sockets[1].welcome();
  await clock.advance(DEFAULTS.welcomeTimeout);
  assert.equal(room.state, "open");
  assert.equal(sockets.length, 2);
});
