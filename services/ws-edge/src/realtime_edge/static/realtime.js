// realtime.js: the browser client of the realtime edge. Dependency-free ES module.
//
//   import { RealtimeClient } from "/static/realtime.js";
//   const rt = new RealtimeClient({ path: "/ws", token: () => fetchToken(), streams: ["notifications"] });
//   rt.on("notifications", "notification.created", (msg) => render(msg.data.notification));
//   rt.onResync(() => refetchEverything());
//   rt.connect();
//
// One socket carries many streams. The token provider is called before every connect, so
// a reconnect never reuses an expired token. Reconnects use exponential backoff with full
// jitter, so a restarted edge is not hit by every client at the same instant.

/** Close codes the client acts on (the edge's are in docs/clients.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  /** Sent by the edge at the token's `exp`: get a new token, then reconnect. */
  TOKEN_EXPIRED: 4001,
  /** Used by this client when it drops a socket that stopped answering pings. */
  NO_PONG: 4000,
  /** The edge refused the client on purpose (e.g. too many connections): do not retry. */
  POLICY_VIOLATION: 1008,
  /** The client sent a frame over the edge's limit: a bug that a retry would repeat. */
  MESSAGE_TOO_BIG: 1009,
});

// The edge's "terminal" codes (services/ws-edge closecodes.py); anything else reconnects.
const TERMINAL_CODES = new Set([CloseCode.NORMAL, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG]);

export const State = Object.freeze({ CONNECTING: "connecting", OPEN: "open", CLOSED: "closed" });

export const DEFAULTS = Object.freeze({
  /** First retry within [0, 500) ms: fast after a blip, cheap for the edge thanks to jitter. */
  backoffBase: 500,
  /** Upper bound of any wait, so a long outage still retries twice a minute. */
  backoffCap: 30_000,
  /** A connection open this long resets the backoff: the next drop retries fast again. */
  stableAfter: 10_000,
  /** Idle time before an application ping: browsers cannot send protocol pings. */
  pingInterval: 25_000,
  /** No frame at all this long after a ping: the socket is dead (e.g. a lost Wi-Fi). */
  pongTimeout: 10_000,
  /** Give up on a handshake that does not reach the `connected` frame in time. */
  connectTimeout: 15_000,
  /** Refresh at most this long before `exp` (sooner for short tokens: a quarter of their life). */
  refreshMargin: 30_000,
});

const SOCKET_OPEN = 1;
const MAX_TIMER_MS = 2_147_483_647; // setTimeout fires at once beyond a signed 32-bit delay

/**
 * The WebSocket URL for `path` on the page's host: ws: on an http: page, wss: on https:.
 * `path` may also be a full http(s) or ws(s) URL. Array values become repeated parameters;
 * null and undefined values are left out.
 */
export function buildWebSocketUrl(path, params = {}, location = globalThis.location) {
  const url = location ? new URL(path, location.href) : new URL(path);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) url.searchParams.append(key, String(item));
    else url.searchParams.set(key, String(value));
  }
  return url.toString();
}

/** Full jitter: a uniform wait in [0, min(cap, base * 2^attempt)) milliseconds. */
export function backoffDelay(attempt, options = {}) {
  const base = options.base ?? DEFAULTS.backoffBase;
  const cap = options.cap ?? DEFAULTS.backoffCap;
  const random = options.random ?? Math.random;
  const ceiling = Math.min(cap, base * 2 ** Math.max(0, attempt));
  return Math.floor(random() * ceiling);
}

/** The `exp` claim (seconds) of a JWT, or null when the token cannot be read. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")))
        .map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`)
        .join(""),
    );
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

function normalizeStreams(streams) {
  const list = typeof streams === "string" ? streams.split(",") : Array.from(streams ?? []);
  return [...new Set(list.map((s) => String(s).trim().toLowerCase()).filter(Boolean))];
}

export class RealtimeClient {
  #opts;
  #ws = null;
  #state = State.CLOSED;
  #stopped = true;
  #generation = 0; // bumps on every connect attempt, so late async results of an old one are ignored
  #attempt = 0;
  #connectedAt = null;
  #connectedOnce = false;
  #needFreshToken = false;
  #exp = null;
  #wanted = new Set();
  #held = new Set();
  #rejected = new Map();
  #waiters = new Set();
  #timers = new Map();
  #listeners = new Map();
  #stateListeners = new Set();
  #resyncListeners = new Set();
  #errorListeners = new Set();

  /**
   * @param {object} options
   * @param {string} [options.url] full ws(s):// URL of the endpoint, or
   * @param {string} [options.path] a path on the page's host ("/ws" by default)
   * @param {string | ((ctx: {forceRefresh: boolean}) => string | Promise<string>)} options.token
   * @param {string[]} [options.streams] streams to hold from the first connect on
   */
  constructor(options) {
    if (!options || options.token === undefined) throw new TypeError("RealtimeClient needs a token");
    this.#opts = {
      ...DEFAULTS,
      path: "/ws",
      WebSocket: globalThis.WebSocket,
      setTimeout: globalThis.setTimeout.bind(globalThis),
      clearTimeout: globalThis.clearTimeout.bind(globalThis),
      now: () => Date.now(),
      random: Math.random,
      ...options,
    };
    for (const s of normalizeStreams(options.streams ?? ["notifications"])) this.#wanted.add(s);
  }

  /** "connecting" | "open" | "closed". Open means the edge sent `connected`: nothing is missed after. */
  get state() {
    return this.#state;
  }

  /** Streams the edge confirmed for the current connection. */
  get streams() {
    return [...this.#held];
  }

  connect() {
    if (!this.#stopped) return this;
    this.#stopped = false;
    this.#attempt = 0;
    this.#openSocket();
    return this;
  }

  /** Close for good: no reconnect, no timer or socket listener left behind. */
  close() {
    this.#shutdown({});
  }

  #shutdown(detail) {
    this.#stopped = true;
    this.#generation += 1;
    for (const handle of this.#timers.values()) this.#opts.clearTimeout(handle);
    this.#timers.clear();
    this.#dropSocket(CloseCode.NORMAL, "client closed");
    this.#held.clear();
    for (const waiter of this.#waiters) waiter.reject(new Error("realtime client closed"));
    this.#waiters.clear();
    this.#setState(State.CLOSED, detail);
  }

  /**
   * Hold more streams. Resolves with all streams held once the edge's bindings exist;
   * rejects (error.rejected = [{stream, code}]) if the edge refused some, the others held.
   */
  subscribe(streams) {
    const list = normalizeStreams(streams);
    for (const s of list) {
      this.#wanted.add(s);
      this.#rejected.delete(s);
    }
    const settled = this.#waitFor(() => list.every((s) => this.#held.has(s) || this.#rejected.has(s)));
    if (this.#state === State.OPEN) this.#send({ action: "subscribe", streams: list });
    return settled.then((held) => {
      const rejected = list
        .filter((s) => this.#rejected.has(s))
        .map((s) => ({ stream: s, code: this.#rejected.get(s) }));
      if (!rejected.length) return held;
      const names = rejected.map((r) => `${r.stream} (${r.code})`).join(", ");
      throw Object.assign(new Error(`realtime: streams refused: ${names}`), { code: "REJECTED", rejected });
    });
  }

  /** Stop holding streams. Resolves once the edge confirmed it. */
  unsubscribe(streams) {
    const list = normalizeStreams(streams);
    for (const s of list) this.#wanted.delete(s);
    const promise = this.#waitFor(() => list.every((s) => !this.#held.has(s)));
    if (this.#state === State.OPEN) this.#send({ action: "unsubscribe", streams: list });
    return promise;
  }

  /**
   * Call `listener(message)` for frames of `stream` and `event` ("*" matches any).
   * Returns a function that removes the listener.
   */
  on(stream, event, listener) {
    const key = `${stream}\u0000${event}`;
    if (!this.#listeners.has(key)) this.#listeners.set(key, new Set());
    this.#listeners.get(key).add(listener);
    return () => {
      const set = this.#listeners.get(key);
      set?.delete(listener);
      if (set?.size === 0) this.#listeners.delete(key);
    };
  }

  /** `listener(state, detail)` on every state change; detail has code/delay when reconnecting. */
  onState(listener) {
    return this.#addTo(this.#stateListeners, listener);
  }

  /**
   * `listener({reason})` whenever the app should refetch what it shows: on every `connected`
   * ("connect" the first time, "reconnect" after) and on a `resync` event ("event").
   */
  onResync(listener) {
    return this.#addTo(this.#resyncListeners, listener);
  }

  /** `listener(error)` for what the client cannot act on (a bad frame, a failing provider). */
  onError(listener) {
    return this.#addTo(this.#errorListeners, listener);
  }

  #addTo(set, listener) {
    set.add(listener);
    return () => set.delete(listener);
  }

  #waitFor(done) {
    if (done()) return Promise.resolve(this.streams);
    return new Promise((resolve, reject) => {
      this.#waiters.add({ done, resolve, reject });
    });
  }

  #settleWaiters() {
    for (const waiter of [...this.#waiters]) {
      if (waiter.done()) {
        this.#waiters.delete(waiter);
        waiter.resolve(this.streams);
      }
    }
  }

  async #openSocket() {
    const generation = ++this.#generation;
    this.#setState(State.CONNECTING, { attempt: this.#attempt });
    let token;
    try {
      const provider = this.#opts.token;
      const forceRefresh = this.#needFreshToken;
      token = typeof provider === "function" ? await provider({ forceRefresh }) : provider;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#report(error);
      this.#scheduleReconnect(null);
      return;
    }
    if (generation !== this.#generation || this.#stopped) return;
    this.#needFreshToken = false;
    this.#exp = tokenExpiry(token);
    let ws;
    try {
      const url = buildWebSocketUrl(this.#opts.url ?? this.#opts.path, {
        streams: [...this.#wanted].join(",") || null,
        token,
      });
      ws = new this.#opts.WebSocket(url);
    } catch (error) {
      this.#report(error);
      this.#scheduleReconnect(null);
      return;
    }
    this.#ws = ws;
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onclose = (event) => this.#lost(event.code, event.reason);
    ws.onerror = () => {}; // always followed by close, which carries what there is to know
    this.#timer("connect", this.#opts.connectTimeout, () => this.#lost(1006, "connect timeout"));
  }

  #receive(raw) {
    this.#clearTimer("pong");
    this.#armIdlePing();
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this.#report(new Error("realtime: a frame is not JSON"));
      return;
    }
    if (!msg || typeof msg.stream !== "string" || typeof msg.event !== "string") {
      this.#report(new Error("realtime: a frame is not an envelope"));
      return;
    }
    if (msg.stream === "system") this.#system(msg);
    this.#dispatch(msg);
    if (msg.event === "resync") this.#resync("event");
  }

  #system(msg) {
    const data = msg.data ?? {};
    switch (msg.event) {
      case "connected":
        this.#clearTimer("connect");
        this.#connectedAt = this.#opts.now();
        this.#setHeld(data.streams);
        this.#setState(State.OPEN, {});
        this.#reconcile();
        this.#scheduleRefresh();
        this.#resync(this.#connectedOnce ? "reconnect" : "connect");
        this.#connectedOnce = true;
        break;
      case "subscribed":
        for (const r of data.rejected ?? []) {
          this.#wanted.delete(r.stream);
          this.#rejected.set(r.stream, r.code);
        }
        this.#setHeld(data.streams);
        break;
      case "unsubscribed":
        this.#setHeld(data.streams);
        break;
      case "refreshed":
        if (typeof data.exp === "number") this.#exp = data.exp;
        // Streams the new token no longer allows are gone; asking again would be refused.
        for (const s of data.dropped ?? []) {
          this.#wanted.delete(s);
          this.#rejected.set(s, "FORBIDDEN");
        }
        this.#setHeld(data.streams);
        this.#scheduleRefresh();
        break;
      case "token.expired":
        this.#needFreshToken = true;
        break;
      case "error":
        this.#report(Object.assign(new Error(data.message ?? "realtime error"), { code: data.code }));
        break;
      default:
        break;
    }
  }

  #setHeld(streams) {
    if (Array.isArray(streams)) this.#held = new Set(streams);
    this.#settleWaiters();
  }

  // A subscribe/unsubscribe made while the socket was still connecting is not in its URL.
  #reconcile() {
    const missing = [...this.#wanted].filter((s) => !this.#held.has(s));
    const extra = [...this.#held].filter((s) => !this.#wanted.has(s));
    if (missing.length) this.#send({ action: "subscribe", streams: missing });
    if (extra.length) this.#send({ action: "unsubscribe", streams: extra });
  }

  #dispatch(msg) {
    for (const key of [
      `${msg.stream}\u0000${msg.event}`,
      `${msg.stream}\u0000*`,
      `*\u0000${msg.event}`,
      "*\u0000*",
    ]) {
      for (const listener of [...(this.#listeners.get(key) ?? [])]) this.#call(listener, msg);
    }
  }

  #resync(reason) {
    for (const listener of [...this.#resyncListeners]) this.#call(listener, { reason });
  }

  #call(listener, arg) {
    try {
      listener(arg);
    } catch (error) {
      this.#report(error);
    }
  }

  #report(error) {
    if (this.#errorListeners.size === 0) console.error(error);
    for (const listener of [...this.#errorListeners]) {
      try {
        listener(error);
      } catch (nested) {
        console.error(nested);
      }
    }
  }

  #send(obj) {
    if (!this.#ws || this.#ws.readyState !== SOCKET_OPEN) return false;
    this.#ws.send(JSON.stringify(obj));
    this.#armIdlePing();
    return true;
  }

  #armIdlePing() {
    if (!this.#ws) return;
    this.#timer("idle", this.#opts.pingInterval, () => {
      if (!this.#send({ action: "ping" })) return;
      this.#timer("pong", this.#opts.pongTimeout, () => this.#lost(CloseCode.NO_PONG, "no pong"));
    });
  }

  #scheduleRefresh() {
    this.#clearTimer("refresh");
    if (this.#exp === null || typeof this.#opts.token !== "function") return;
    const left = this.#exp * 1000 - this.#opts.now();
    const margin = Math.min(this.#opts.refreshMargin, left / 4);
    this.#timer("refresh", Math.max(0, left - margin), () => this.#refresh());
  }

  async #refresh() {
    const generation = this.#generation;
    let token;
    try {
      token = await this.#opts.token({ forceRefresh: true });
    } catch (error) {
      this.#report(error); // the edge closes with 4001 at exp; the reconnect tries again
      return;
    }
    if (generation !== this.#generation) return;
    const exp = tokenExpiry(token);
    if (exp !== null && this.#exp !== null && exp <= this.#exp) return; // nothing newer to offer
    this.#send({ action: "refresh", token });
  }

  #lost(code, reason) {
    if (this.#stopped) return;
    if (TERMINAL_CODES.has(code)) {
      this.#report(Object.assign(new Error(`realtime: closed by the edge (${code} ${reason})`), { code }));
      this.#shutdown({ code, reason });
      return;
    }
    if (code === CloseCode.TOKEN_EXPIRED) this.#needFreshToken = true;
    this.#dropSocket(code, reason);
    this.#scheduleReconnect({ code, reason });
  }

  #dropSocket(code, reason) {
    for (const name of ["connect", "idle", "pong", "refresh"]) this.#clearTimer(name);
    const ws = this.#ws;
    this.#ws = null;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      // Only 1000 and 3000-4999 may be sent by a browser.
      ws.close(code === CloseCode.NORMAL || (code >= 3000 && code < 5000) ? code : 1000, reason);
    } catch {
      // already closing: nothing to release
    }
  }

  #scheduleReconnect(closeInfo) {
    this.#generation += 1;
    const stable =
      this.#connectedAt !== null && this.#opts.now() - this.#connectedAt >= this.#opts.stableAfter;
    if (stable) this.#attempt = 0;
    this.#connectedAt = null;
    this.#held.clear();
    const delay = backoffDelay(this.#attempt, {
      base: this.#opts.backoffBase,
      cap: this.#opts.backoffCap,
      random: this.#opts.random,
    });
    this.#attempt += 1;
    this.#setState(State.CONNECTING, { ...closeInfo, delay, attempt: this.#attempt });
    this.#timer("reconnect", delay, () => this.#openSocket());
  }

  #setState(state, detail) {
    const changed = state !== this.#state;
    this.#state = state;
    if (!changed && state !== State.CONNECTING) return;
    for (const listener of [...this.#stateListeners]) {
      try {
        listener(state, detail);
      } catch (error) {
        this.#report(error);
      }
    }
  }

  #timer(name, ms, fn) {
    this.#clearTimer(name);
    const handle = this.#opts.setTimeout(() => {
      this.#timers.delete(name);
      fn();
    }, Math.min(ms, MAX_TIMER_MS));
    this.#timers.set(name, handle);
  }

  #clearTimer(name) {
    if (!this.#timers.has(name)) return;
    this.#opts.clearTimeout(this.#timers.get(name));
    this.#timers.delete(name);
  }
}
