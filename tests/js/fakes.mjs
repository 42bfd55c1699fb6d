// A clock and a WebSocket for the client's unit tests: the clock runs only when a test
// advances it, and each socket is driven by the test as a server would drive it.

export class FakeClock {
  constructor(start = 1_800_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
    this.randoms = [];
  }

  now() {
    return this.time;
  }

  random() {
    return this.randoms.length ? this.randoms.shift() : 0.5;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Move time on by `ms`, running each timer that falls due, in order, and letting the
   * promises it starts settle. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, timer]) => timer.at <= end)
        .sort((a, b) => a[1].at - b[1].at || a[0] - b[0]);
      if (!due.length) break;
      const [id, timer] = due[0];
      this.timers.delete(id);
      this.time = Math.max(this.time, timer.at);
      timer.fn();
      await settle();
    }
    this.time = end;
    await settle();
  }

  /** The timers set, as delays from now. */
  pending() {
    return [...this.timers.values()].map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }
}

export async function settle() {
  for (let i = 0; i < 10; i += 1) await Promise.resolve();
}

/** A WebSocket class whose instances the test drives. */
export function socketClass() {
  const sockets = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closed = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(data));
    }

    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }

    // --- the server's side ---

    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    welcome(fields = {}) {
      if (this.readyState !== 1) this.accept();
      this.receive({
        type: "welcome",
        connection_id: `c${sockets.indexOf(this)}`,
        room: "r",
        user: { id: "id-me", name: "me" },
        count: 1,
        latest_id: 0,
        epoch: "e1",
        more: false,
        history: [],
        ...fields,
      });
    }

    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** What the client sent, of one action. */
    actions(action) {
      return this.sent.filter((frame) => frame.action === action);
    }
  }
  FakeSocket.sockets = sockets;
  return FakeSocket;
}

export function message(id, text = `m${id}`, fields = {}) {
  return {
    type: "message",
    id,
    room: "r",
    user: { id: "id-other", name: "other" },
    text,
    ts: 1.0,
    ...fields,
  };
}

/** A JWT-shaped token (unsigned: the client never verifies) with these claims. */
export function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.sig`;
}
