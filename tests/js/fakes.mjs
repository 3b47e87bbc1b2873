// Deterministic stand-ins for the browser's clock and WebSocket, injected into RealtimeClient.

export class FakeClock {
  #now = 1_700_000_000_000;
  #next = 1;
  #timers = new Map();

  now = () => this.#now;

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  get pending() {
    return this.#timers.size;
  }

  /** Delay of the earliest pending timer, or null. */
  nextDelay() {
    let best = null;
    for (const t of this.#timers.values()) if (best === null || t.at < best) best = t.at;
    return best === null ? null : best - this.#now;
  }

  /** Advance time, firing due timers in order (those they schedule too). */
  async tick(ms) {
    const end = this.#now + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.#timers) {
        if (t.at <= end && (due === null || t.at < due[1].at)) due = [id, t];
      }
      if (due === null) break;
      this.#timers.delete(due[0]);
      this.#now = due[1].at;
      due[1].fn();
      await flush();
    }
    this.#now = end;
    await flush();
  }
}

/** Let pending promise callbacks (the async token provider) run. */
export async function flush() {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

export class FakeWebSocket {
  static instances = [];
  static reset() {
    FakeWebSocket.instances = [];
  }
  static get last() {
    return FakeWebSocket.instances.at(-1);
  }

  readyState = 0;
  sent = [];
  closed = null;
  onmessage = null;
  onclose = null;
  onerror = null;

  constructor(url) {
    this.url = new URL(url);
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closed = { code, reason };
    this.readyState = 3;
  }

  // What the edge does:
  accept(streams = (this.url.searchParams.get("streams") ?? "notifications").split(","), user = "alice") {
    this.readyState = 1;
    this.deliver({ stream: "system", event: "connected", data: { connection_id: "c1", user_id: user, streams } });
  }

  deliver(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** sessionStorage's interface over a Map; `broken` makes every call throw, as refused storage does. */
export class FakeStorage {
  items = new Map();
  broken = false;

  getItem(key) {
    this.#check();
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.#check();
    this.items.set(key, String(value));
  }

  removeItem(key) {
    this.#check();
    this.items.delete(key);
  }

  #check() {
    if (this.broken) throw new DOMException("storage refused", "SecurityError");
  }
}

/** An unsigned JWT-shaped token: enough for the client, which only reads `exp`. */
export function fakeToken(sub, exp) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp })}.signature`;
}
