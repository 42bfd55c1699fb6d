// wschat's JavaScript client: one dependency-free ES module, for the browser and Node 18+.
// The server serves it at /client/wschat.js. It carries the server's guarantees to the
// application: each message once and in id order, resume without gaps after a reconnect,
// sends stored exactly once however often the link drops, and a token refreshed before it
// runs out. docs/clients.md describes the API; docs/protocol.md the frames it speaks.
//
//   import { connect } from "/client/wschat.js";
//   const room = connect({ url: "ws://127.0.0.1:8000", room: "lobby", token: "some-key-token" });
//   room.on("message", (m) => console.log(m.user.name + ": " + m.text));
//   await room.send("hello");   // the stored message, once, even across reconnects

const JSON_SUBPROTOCOL = "wschat.json";
const OPEN = 1; // WebSocket.OPEN, the same in browsers and the `ws` package

// What the server refuses for good: a send rejected with one of these is not retried.
const FINAL_SEND_ERRORS = new Set([
  "forbidden",
  "message_too_large",
  "empty_message",
  "bad_request",
  "invalid_json",
  "unknown_action",
]);
// Closes that no retry heals: a credential that no longer opens the room, a frame the
// server will always refuse.
const FINAL_CLOSES = new Set([1009, 4403]);

export const DEFAULTS = Object.freeze({
  minDelay: 500, // backoff with full jitter: a random wait up to min(maxDelay, minDelay * 2^n)
  maxDelay: 20000,
  maxRetries: Infinity,
  pingAfter: 30000, // a ping after this long without a frame (API Gateway drops at 10 min)
  pongTimeout: 10000, // no frame this long after a ping: the link is dead, reconnect
  welcomeTimeout: 20000, // an open socket without its welcome this long: try another
  gapWait: 1000, // a missing id not filled in this long is asked for with `history`
  // Sends awaiting their answer at once; the rest wait their turn. One keeps a sender's
  // messages in the order sent on every transport (on Lambda, frames in flight together are
  // handled by concurrent invocations, and stored in any order); more, for throughput.
  inFlight: 1,
  maxFrameBytes: 32 * 1024, // WSCHAT_MAX_MESSAGE_BYTES: a larger frame closes the socket
  refreshMargin: 60000, // refresh this long before `exp` (at most a tenth of the lifetime)
  typingEvery: 2000, // the server forwards one typing per user and room per 2 s
  retryAfterBusy: 1000, // a send refused as busy or rate limited goes again after this
  // Sends are paced below the server's rate limit (WSCHAT_RATE_PER_SECOND 20, burst 40),
  // leaving room for the other frames: a burst of sends waits its turn instead of being
  // refused (and, refused often enough, closed).
  sendRate: 16,
  sendBurst: 30,
});

export class WschatError extends Error {
  constructor(code, detail) {
    super(detail || code);
    this.name = "WschatError";
    this.code = code;
  }
}

/** Join `room` on the server at `url`; returns the Room, connecting in the background. */
export function connect(options) {
  return new Room(options);
}

export class Room {
  constructor(options) {
    const o = { ...DEFAULTS, ...options };
    if (typeof o.room !== "string" || !o.room) throw new TypeError("`room` must be a name");
    if (typeof o.url !== "string") throw new TypeError("`url` must be the server's ws(s):// URL");
    if (typeof o.token !== "string" && typeof o.getToken !== "function") {
      throw new TypeError("give `token` (\"\": a browser's cookie alone) or `getToken`");
    }
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass `WebSocket` (in Node, the `ws` package's)");
    }
    this._o = o;
    this._t = o.timers || {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (id) => clearTimeout(id),
      now: () => Date.now(),
      random: () => Math.random(),
    };
    this.room = o.room;
    this.state = "connecting";
    this.user = null; // {id, name}, from the welcome
    this.count = null; // the room's connections, from the welcome, presence and members
    // The `presence_seq` the count came with (Lambda numbers them: its frames can arrive out
    // of order), or null: a count with a lower number is older, and is not kept.
    this._countSeq = null;
    this.epoch = null; // which history the ids belong to
    this.retryAt = null; // while reconnecting: when the next attempt starts (ms, as now())
    this._token = o.token ?? null;
    this._listeners = new Map();
    // The resume point: every id up to it was handed to the app or is gone for good. Not the
    // highest id seen: ids can arrive out of order (on Lambda, concurrent publishers), and a
    // lower one may still be on its way.
    this._resume = 0;
    this._held = new Map(); // id -> message received above resume + 1, held until in order
    // Set once the first reply (the welcome) is in: from then on every id matters, and one
    // skipped is reported. (The first welcome's own window, recent history, is not a loss.)
    this._started = false;
    this._oldest = null; // the lowest id handed over in this epoch: where scrolling back starts
    this._continuing = false; // the last welcome/history frame said more of its reply follows
    this._paging = false; // a `history` with `since` is out
    this._outbox = []; // sends not yet answered, in order: {id, frame, resolve, reject, on}
    this._pausedUntil = 0; // after a busy or rate-limited answer
    this._tokens = o.sendBurst; // the pacing bucket, refilled at sendRate
    this._filledAt = null;
    this._scrolls = new Map(); // before -> {resolve, reject, limit, messages}
    this._members = null; // {waiters: [...], parts: [...] | null}
    this._socket = null;
    this._generation = 0; // each socket's; events of an older one are ignored
    this._attempt = 0;
    this._timers = {};
    this._lastTyping = -Infinity;
    this._watch(o.window ?? globalThis.window, o.document ?? globalThis.document);
    Promise.resolve().then(() => this._open()); // listeners attached in this tick see it all
  }

  // --- events ------------------------------------------------------------------------------

  /** Call `listener` for each event of `type`: message, presence, typing, members,
   * discontinuity, refreshed, state, error. Returns a function that removes it. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  _emit(type, data) {
    for (const listener of [...(this._listeners.get(type) || [])]) {
      try {
        listener(data);
      } catch (error) {
        // An application's listener that throws must not stop the client.
        (globalThis.reportError || console.error)(error);
      }
    }
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    if (previous === state && !("retryIn" in extra)) return;
    this.state = state;
    this._emit("state", { state, previous, ...extra });
  }

  // --- the application's calls -------------------------------------------------------------

  /** Send `text`; resolves with the stored message (its id, ts, ...), once, however often the
   * link drops meanwhile. Rejects with a WschatError whose code is the server's:
   * forbidden, message_too_large, empty_message, bad_request, or closed. `id` is the send's
   * client_msg_id (1-128 characters, unique to this user and room), random by default: the
   * stored message, and its `message` event, carry it. */
  send(text, { id = newId() } = {}) {
    if (this.state === "closed") return Promise.reject(new WschatError("closed", "room closed"));
    if (typeof text !== "string" || !text.trim()) {
      return Promise.reject(new WschatError("empty_message", "`text` must not be empty"));
    }
    if (typeof text.isWellFormed === "function" && !text.isWellFormed()) {
      return Promise.reject(new WschatError("bad_request", "`text` has a lone surrogate"));
    }
    const frame = JSON.stringify({ action: "sendmessage", text, client_msg_id: id });
    if (new TextEncoder().encode(frame).length > this._o.maxFrameBytes) {
      const detail = `message over ${this._o.maxFrameBytes} bytes as a frame`;
      return Promise.reject(new WschatError("message_too_large", detail));
    }
    return new Promise((resolve, reject) => {
      this._outbox.push({ id, frame, resolve, reject, on: null });
      this._flush();
    });
  }

  /** The messages before id `before` (default: the oldest this room handed over), at most
   * `limit`, oldest first; an empty list: nothing older is kept. */
  history({ before, limit = 50 } = {}) {
    before = before ?? this._oldest ?? this._resume + 1;
    const known = this._scrolls.get(before);
    if (known) return known.promise;
    const request = { limit, messages: [] };
    request.promise = new Promise((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
    });
    this._scrolls.set(before, request);
    this._sendJson({ action: "history", before, limit });
    return request.promise;
  }

  /** Who is in the room: {count, complete, members: [{id, name}, ...]}. */
  members() {
    if (!this._members) {
      this._members = { waiters: [], parts: null };
      this._sendJson({ action: "members" });
    }
    return new Promise((resolve, reject) => this._members.waiters.push({ resolve, reject }));
  }

  /** Tell the room you are typing (call it on each key press: at most one goes out per 2 s). */
  typing() {
    const now = this._t.now();
    if (now - this._lastTyping < this._o.typingEvery || this.state !== "open") return;
    this._lastTyping = now;
    this._sendJson({ action: "typing" });
  }

  /** Renew the credential in-band with `token` (a `refreshed` event answers; an `error`
   * refresh_failed refuses it); later connections use it too. */
  refresh(token) {
    this._token = token;
    this._sendJson({ action: "refresh", token });
  }

  /** Leave the room for good: unanswered sends and requests reject with `closed`. */
  close() {
    this._finish(null);
  }

  get resumePoint() {
    return this._resume;
  }

  // --- the connection ----------------------------------------------------------------------

  async _open() {
    if (this.state === "closed") return;
    const generation = ++this._generation;
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      this._finish(new WschatError("token", `getToken failed: ${error?.message ?? error}`));
      return;
    }
    if (generation !== this._generation || this.state === "closed") return;
    let socket;
    try {
      socket = this._socketFor(token);
    } catch (error) {
      this._retry(`could not open a socket: ${error?.message ?? error}`);
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (generation !== this._generation) return;
      // A server that accepts the socket but never welcomes it (its welcome lost on the way)
      // would hold the room in `connecting` for ever.
      this._startTimer("welcome", this._o.welcomeTimeout, () => {
        this._socketGone();
        this._retry("no welcome");
      });
    };
    socket.onmessage = (event) => {
      if (generation === this._generation) this._onFrame(event.data);
    };
    socket.onclose = (event) => {
      if (generation === this._generation) this._onClose(event.code, event.reason);
    };
    socket.onerror = () => {}; // a close follows
  }

  /** The token to connect with: the one given, or a fresh one from getToken when there is
   * none yet or it runs out within the refresh margin. */
  async _currentToken() {
    const getToken = this._o.getToken;
    if (!getToken) return this._token;
    const claims = claimsOf(this._token);
    if (!this._token || (claims && claims.exp * 1000 - this._t.now() < this._margin(claims))) {
      const token = await getToken();
      if (typeof token !== "string" || !token) throw new Error("getToken gave no token");
      this._token = token;
    }
    return this._token;
  }

  _socketFor(token) {
    const o = this._o;
    const url = new URL(o.url);
    const inQuery = o.roomIn ? o.roomIn === "query" : url.pathname !== "/" && url.pathname !== "";
    if (!inQuery) url.pathname = `/items/${encodeURIComponent(this.room)}/ws`;
    const params = url.searchParams;
    if (inQuery) params.set("room", this.room);
    params.set("format", "json");
    if (this._started) {
      // From 0 too: everything after the first welcome is expected.
      params.set("since", String(this._resume));
      if (this.epoch !== null) params.set("epoch", this.epoch);
    }
    // A bearer token travels as the subprotocol pair ("bearer", token): never in a URL or an
    // access log. API Gateway's authorizer reads it from the query, so there it goes there, as
    // does one a subprotocol cannot carry.
    const tokenIn = o.tokenIn || (inQuery ? "query" : "subprotocol");
    const protocols = [JSON_SUBPROTOCOL];
    if (!token) {
      // No token: the browser's `session` cookie, if any, is the credential.
    } else if (tokenIn === "subprotocol" && /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(token)) {
      protocols.push("bearer", token);
    } else {
      params.set("token", token);
    }
    return new this._WebSocket(url.toString(), protocols);
  }

  _onClose(code, reason) {
    this._socket = null;
    this._stopTimers("ping", "pong", "refresh", "welcome");
    if (this.state === "closed") return;
    if (FINAL_CLOSES.has(code)) {
      this._finish(new WschatError("closed", `closed by the server (${code} ${reason || ""})`));
      return;
    }
    if (code === 4401) {
      if (!this._o.getToken) {
        this._finish(new WschatError("token_expired", "the token ran out; no getToken to renew it"));
        return;
      }
      this._token = null; // the next attempt asks getToken
    }
    this._retry(`closed (${code})`);
  }

  /** Try again after a backoff with full jitter, unless retries are used up. */
  _retry(why) {
    if (this.state === "closed") return;
    if (this._attempt >= this._o.maxRetries) {
      this._finish(new WschatError("closed", `gave up after ${this._attempt} retries: ${why}`));
      return;
    }
    const cap = Math.min(this._o.maxDelay, this._o.minDelay * 2 ** this._attempt);
    const delay = Math.floor(this._t.random() * cap);
    this._attempt += 1;
    this.retryAt = this._t.now() + delay;
    const state = this.state === "connecting" && !this.user ? "connecting" : "reconnecting";
    this._setState(state, { retryIn: delay, reason: why });
    this._startTimer("retry", delay, () => this._reconnectNow());
  }

  _reconnectNow() {
    this._stopTimers("retry");
    this.retryAt = null;
    const old = this._socket;
    this._socket = null;
    this._generation += 1; // the old socket's events are ignored from here on
    if (old) safeClose(old, 4000, "reconnecting");
    this._open();
  }

  /** The network came back (the browser's `online`, a page shown again): a client waiting to
   * retry goes at once, from a fresh backoff. */
  _watch(win, doc) {
    const wake = () => {
      if (this.state === "reconnecting" || (this.state === "connecting" && this._timers.retry)) {
        this._attempt = 0;
        this._reconnectNow();
      }
    };
    const visible = () => {
      if (doc.visibilityState === "visible") wake();
    };
    win?.addEventListener?.("online", wake);
    doc?.addEventListener?.("visibilitychange", visible);
    this._unwatch = () => {
      win?.removeEventListener?.("online", wake);
      doc?.removeEventListener?.("visibilitychange", visible);
    };
  }

  _finish(error) {
    if (this.state === "closed") return;
    this._stopTimers(...Object.keys(this._timers));
    this._unwatch();
    const socket = this._socket;
    this._socket = null;
    this._generation += 1;
    if (socket) safeClose(socket, 1000, "bye");
    const why = error || new WschatError("closed", "room closed");
    for (const entry of this._outbox.splice(0)) entry.reject(why);
    for (const request of this._scrolls.values()) request.reject(why);
    this._scrolls.clear();
    for (const waiter of this._members?.waiters || []) waiter.reject(why);
    this._members = null;
    this.retryAt = null;
    this._setState("closed", error ? { error } : {});
    if (error) this._emit("error", error);
  }

  // --- frames in -----------------------------------------------------------------------------

  _onFrame(data) {
    this._alive();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not the JSON dialect's: nothing to do with it
    }
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "message":
        return this._receive(frame);
      case "history":
        if ("before" in frame) return this._onScroll(frame);
        return this._onReply(frame, frame.messages);
      case "presence":
        this._keepCount(frame);
        // Its joins and leaves happened, whatever its order; its count may be older than the
        // one kept, so the app is given the room's count as the client keeps it.
        return this._emit("presence", { ...frame, count: this.count });
      case "typing":
        return this._emit("typing", frame);
      case "members":
        return this._onMembers(frame);
      case "refreshed":
        this._scheduleRefresh();
        return this._emit("refreshed", frame);
      case "error":
        return this._onError(frame);
      default:
        return undefined; // pong, and whatever a newer server adds
    }
  }

  _onWelcome(frame) {
    this._stopTimers("welcome");
    this._attempt = 0;
    this.user = frame.user;
    this._countSeq = null; // a new connection's count: whatever came before is older
    this._keepCount(frame);
    this.connectionId = frame.connection_id;
    this._continuing = this._paging = false;
    if (frame.recovered === false && this._started) {
      // The room's history started over (a server without persistence restarted): what was
      // missed meanwhile is gone, and ids count again from 1.
      this._emit("discontinuity", {
        reason: "history_lost",
        epoch: frame.epoch,
        previousEpoch: this.epoch,
      });
    }
    if (frame.recovered === false) this._restart();
    this.epoch = frame.epoch;
    this._setState("open");
    this._onReply(frame, frame.history);
    this._alive();
    this._scheduleRefresh();
    for (const entry of this._outbox) entry.on = null; // unanswered: all go again, in order
    this._flush();
    for (const [before, request] of this._scrolls) {
      request.messages = [];
      this._sendJson({ action: "history", before, limit: request.limit });
    }
    if (this._members) {
      this._members.parts = null;
      this._sendJson({ action: "members" });
    }
  }

  /** Keep `frame.count` unless the count kept is newer: on Lambda each join and leave is
   * announced by its own invocation, so a room's `presence` frames arrive in any order, and
   * each count comes with the number (`presence_seq`) its change drew before the count was
   * read; the highest number's count includes every change (docs/protocol.md). A count
   * without a number (memory, Redis: in order) is always kept. */
  _keepCount(frame) {
    const seq = frame.presence_seq;
    if (typeof seq !== "number") {
      this.count = frame.count;
    } else if (this._countSeq === null || seq > this._countSeq) {
      this.count = frame.count;
      this._countSeq = seq;
    }
  }

  _restart() {
    this._resume = 0;
    this._held.clear();
    this._started = false;
    this._oldest = null;
  }

  /** A `welcome`, or a `history` frame answering `since`. The first frame of a reply says
   * where the stored history after the resume point starts: ids before it are gone. When a
   * reply ends below the room's latest id, the next page is asked for. */
  _onReply(frame, messages) {
    if (!this._continuing) {
      if (messages.length) this._skipTo(messages[0].id - 1);
      else if (!frame.more) this._skipTo(frame.latest_id);
    }
    for (const message of messages) this._receive(message);
    this._continuing = Boolean(frame.more);
    if (this._continuing) return;
    this._started = true;
    this._paging = false;
    if (this._resume < frame.latest_id || this._held.size) this._askSince();
  }

  _askSince() {
    if (this._paging || this.state !== "open") return;
    this._paging = this._sendJson({ action: "history", since: this._resume });
  }

  /** Ids up to `through` are not coming (expired, or before the welcome's window): hand over
   * what is held below it, in order, and move the resume point past them. */
  _skipTo(through) {
    if (through <= this._resume) return;
    const held = [...this._held.keys()].filter((id) => id <= through).sort((a, b) => a - b);
    let next = this._resume + 1;
    for (const id of held) {
      if (id > next && this._started) {
        this._emit("discontinuity", { reason: "expired", from: next, to: id - 1 });
      }
      this._handOver(this._held.get(id));
      this._held.delete(id);
      next = id + 1;
    }
    if (through >= next && this._started) {
      this._emit("discontinuity", { reason: "expired", from: next, to: through });
    }
    this._resume = through;
    this._drain();
  }

  /** A message: answered sends resolve; each id goes to the app once, in id order. */
  _receive(message) {
    this._answer(message);
    if (message.id <= this._resume || this._held.has(message.id)) return; // a repeat
    if (message.id !== this._resume + 1) {
      this._held.set(message.id, message);
      this._startTimer("gap", this._o.gapWait, () => this._askSince(), false);
      return;
    }
    this._resume = message.id;
    this._handOver(message);
    this._drain();
  }

  _drain() {
    while (this._held.has(this._resume + 1)) {
      const message = this._held.get(++this._resume);
      this._held.delete(this._resume);
      this._handOver(message);
    }
    if (!this._held.size) this._stopTimers("gap");
  }

  _handOver(message) {
    this._oldest = this._oldest === null ? message.id : Math.min(this._oldest, message.id);
    this._emit("message", message);
  }

  _answer(message) {
    if (!message.client_msg_id || !this.user || message.user?.id !== this.user.id) return;
    const at = this._outbox.findIndex((entry) => entry.id === message.client_msg_id);
    if (at < 0) return;
    const [entry] = this._outbox.splice(at, 1);
    entry.resolve(message);
    this._flush();
  }

  _onScroll(frame) {
    const request = this._scrolls.get(frame.before);
    if (!request) return;
    request.messages.push(...frame.messages);
    if (frame.more) return;
    this._scrolls.delete(frame.before);
    for (const message of request.messages) {
      if (this._oldest === null || message.id < this._oldest) this._oldest = message.id;
    }
    request.resolve(request.messages);
  }

  _onMembers(frame) {
    if (!this._members) return;
    this._members.parts = [...(this._members.parts || []), ...frame.members];
    this._keepCount(frame);
    if (frame.more) return;
    const reply = { count: frame.count, complete: frame.complete, members: this._members.parts };
    const { waiters } = this._members;
    this._members = null;
    for (const waiter of waiters) waiter.resolve(reply);
    this._emit("members", reply);
  }

  _onError(frame) {
    const error = new WschatError(frame.code, frame.detail);
    const entry = frame.client_msg_id
      ? this._outbox.find((candidate) => candidate.id === frame.client_msg_id)
      : null;
    if (entry && FINAL_SEND_ERRORS.has(frame.code)) {
      this._outbox.splice(this._outbox.indexOf(entry), 1);
      entry.reject(error);
      this._flush();
      return;
    }
    if (frame.code === "busy" || frame.code === "rate_limited") {
      // Dropped, not stored: what is unanswered goes again, after a pause (the same
      // client_msg_id: a send that was stored after all is answered, not stored twice).
      for (const candidate of this._outbox) candidate.on = null;
      this._pausedUntil = this._t.now() + this._o.retryAfterBusy;
      this._startTimer("resend", this._o.retryAfterBusy, () => this._flush());
      if (entry) return;
    }
    if (frame.code === "token_expired") this._token = null; // 4401 follows: reconnect afresh
    this._emit("error", error);
  }

  // --- frames out ----------------------------------------------------------------------------

  _sendJson(body) {
    const socket = this._socket;
    if (!socket || socket.readyState !== OPEN || this.state !== "open") return false;
    socket.send(JSON.stringify(body));
    return true;
  }

  /** Send what waits in the outbox, in order, at most `inFlight` unanswered on this socket. */
  _flush() {
    const socket = this._socket;
    if (!socket || socket.readyState !== OPEN || this.state !== "open") return;
    if (this._t.now() < this._pausedUntil) return;
    let flying = this._outbox.filter((entry) => entry.on === this._generation).length;
    for (const entry of this._outbox) {
      if (flying >= this._o.inFlight) return;
      if (entry.on === this._generation) continue;
      if (!this._takeToken()) {
        this._startTimer("pace", 1000 / this._o.sendRate, () => this._flush());
        return;
      }
      socket.send(entry.frame);
      entry.on = this._generation;
      flying += 1;
    }
  }

  _takeToken() {
    const now = this._t.now();
    const refill = this._filledAt === null ? 0 : ((now - this._filledAt) / 1000) * this._o.sendRate;
    this._tokens = Math.min(this._o.sendBurst, this._tokens + refill);
    this._filledAt = now;
    if (this._tokens < 1) return false;
    this._tokens -= 1;
    return true;
  }

  // --- keepalive and refresh -----------------------------------------------------------------

  /** A frame arrived: the link is alive. After `pingAfter` of silence a ping goes out; no
   * frame within `pongTimeout` after it means the link is dead. */
  _alive() {
    this._stopTimers("pong");
    this._startTimer("ping", this._o.pingAfter, () => {
      if (!this._sendJson({ action: "ping" })) return;
      this._startTimer("pong", this._o.pongTimeout, () => {
        this._stopTimers("ping");
        this._socketGone();
        this._retry("no answer to a ping");
      });
    });
  }

  _socketGone() {
    const socket = this._socket;
    this._socket = null;
    this._generation += 1; // its late events are ignored; the retry opens a new one
    if (socket) safeClose(socket, 4000, "no answer to a ping");
  }

  /** How long before `exp` a token is renewed: `refreshMargin`, or a tenth of its lifetime
   * (from `iat`) when that is shorter. */
  _margin(claims) {
    const lifetime = claims.iat === null ? Infinity : (claims.exp - claims.iat) * 1000;
    return Math.min(this._o.refreshMargin, lifetime / 10);
  }

  /** With getToken, a fresh token goes out as `refresh` before the current one's `exp`. */
  _scheduleRefresh() {
    this._stopTimers("refresh");
    const claims = claimsOf(this._token);
    if (!this._o.getToken || !claims) return;
    const wait = Math.max(0, claims.exp * 1000 - this._t.now() - this._margin(claims));
    this._startTimer("refresh", wait, async () => {
      let token;
      try {
        token = await this._o.getToken();
      } catch (error) {
        this._finish(new WschatError("token", `getToken failed: ${error?.message ?? error}`));
        return;
      }
      if (typeof token !== "string" || !token || this.state === "closed") return;
      this._token = token;
      this._sendJson({ action: "refresh", token });
    });
  }

  _startTimer(name, ms, fn, restart = true) {
    if (this._timers[name] !== undefined) {
      if (!restart) return;
      this._t.clearTimeout(this._timers[name]);
    }
    this._timers[name] = this._t.setTimeout(() => {
      delete this._timers[name];
      fn();
    }, ms);
  }

  _stopTimers(...names) {
    for (const name of names) {
      if (this._timers[name] !== undefined) this._t.clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  }
}

/** A `presence` frame in words: "alice, bob joined; carol left (3 here)", or, for a room
 * above the server's occupancy threshold (the count alone), "250 here". */
export function describePresence(frame) {
  const names = (users) => (users ?? []).map((user) => user.name).join(", ");
  const parts = [];
  if (frame.joins?.length) parts.push(`${names(frame.joins)} joined`);
  if (frame.leaves?.length) parts.push(`${names(frame.leaves)} left`);
  return parts.length ? `${parts.join("; ")} (${frame.count} here)` : `${frame.count} here`;
}

/** A JWT's `exp` and `iat` (seconds, `iat` null if absent), read without verifying it (the
 * server verifies); null for a token that is not a JWT or has no `exp`. */
export function claimsOf(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  let claims;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    claims = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")));
  } catch {
    return null;
  }
  const time = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);
  const exp = time(claims?.exp);
  return exp === null ? null : { exp, iat: time(claims.iat) };
}

function newId() {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function safeClose(socket, code, reason) {
  try {
    socket.close(code, reason);
  } catch {
    // already closing
  }
}
