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
//
// Streams whose messages carry `meta.epoch` and `meta.seq` are recovered: the client keeps
// the last (epoch, seq) of each, and after a reconnect, a `resync` or a skipped seq it asks
// the edge for what it missed instead of telling the app to refetch. `onResync` fires only
// when that is impossible or failed; `onRecovery` reports every recovery.
//
// On interactive streams (chat, ssh, rdp) the app sends too: `publish` resolves once RabbitMQ
// has the message for a backend, and `on(..., {sessionId})` hears only one remote session:
//
//   const { messageId } = await rt.publish("chat", "message.send", { to: "bob", text: "hi" });
//   rt.on("ssh", "output", (msg) => term.write(msg.data.text), { sessionId: "t1" });

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
  /**
   * Wait this long for the edge's answer to a recovery (it gives up on the history owner after
   * EDGE_RECOVERY_TIMEOUT, 3 s); an edge that never answers must not hold a stream back for good.
   */
  recoveryTimeout: 10_000,
  /**
   * Frames of one stream held while its recovery is in flight: the edge sends at most
   * EDGE_RECOVERY_MAX (500) missed ones plus what was already on the way. Past this the
   * recovery counts as failed (the app refetches) rather than memory growing.
   */
  recoveryBuffer: 1_000,
  /**
   * Wait this long for the edge's answer to a `publish` (the edge gives up on RabbitMQ's
   * confirm after 5 s): a lost reply must not leave the app's Promise pending for good.
   */
  publishTimeout: 10_000,
  /**
   * The edge's EDGE_MAX_FRAME_BYTES default. A bigger frame makes the edge close with 1009,
   * which is terminal: `publish` refuses it instead (TOO_LARGE), so one oversized paste
   * does not end the connection. Set it to the edge's value if that was changed.
   */
  maxFrameBytes: 65_536,
});

/**
 * `error.code` of a rejected `publish`. The edge's refusals (never published) come from its
 * `error` frame; the others are the client's own. Only DISCONNECTED and TIMEOUT leave the
 * message's fate unknown.
 */
export const PublishErrorCode = Object.freeze({
  /** Not an interactive stream, not held, or not in the token's `publish` claim. */
  FORBIDDEN: "FORBIDDEN",
  /** The connection's token bucket is empty: retry later, with backoff. */
  RATE_LIMITED: "RATE_LIMITED",
  /** No backend consumes this stream right now. */
  NO_HANDLER: "NO_HANDLER",
  /** The edge could not reach RabbitMQ: retry with backoff. */
  UNAVAILABLE: "UNAVAILABLE",
  /** `event`, `data` or `sessionId` of the wrong shape: a bug, retrying repeats it. */
  INVALID_FRAME: "INVALID_FRAME",
  /** Not sent: the client is not connected (state is not "open"). */
  NOT_CONNECTED: "NOT_CONNECTED",
  /** Not sent: the frame is over `maxFrameBytes`. */
  TOO_LARGE: "TOO_LARGE",
  /** Sent, then the socket dropped before the answer: it may or may not have been published. */
  DISCONNECTED: "DISCONNECTED",
  /** Sent, and no answer within the timeout: it may or may not have been published. */
  TIMEOUT: "TIMEOUT",
});

/** sessionStorage key listing the position entries (most recent first), so they stay bounded. */
const STORAGE_INDEX = "realtime.positions";
/** Position entries kept per tab: a few users or edges, each a handful of streams. */
const STORAGE_ENTRIES = 8;
/** Streams read back per entry: more than the edge lets one connection hold (16). */
const STORAGE_STREAMS = 32;
/** The contract's limit on `meta.epoch`. */
const MAX_EPOCH_CHARS = 64;

const SOCKET_OPEN = 1;
const utf8 = new TextEncoder();
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

function isPosition(epoch, seq) {
  return (
    typeof epoch === "string" &&
    epoch.length > 0 &&
    epoch.length <= MAX_EPOCH_CHARS &&
    Number.isSafeInteger(seq) &&
    seq >= 0
  );
}

/** The (epoch, seq) a stream message carries, or null (broadcasts and unnumbered streams). */
function positionOf(msg) {
  const epoch = msg.meta?.epoch;
  const seq = msg.meta?.seq;
  return isPosition(epoch, seq) && seq > 0 ? { epoch, seq } : null;
}

/** Buffered frames in release order: by seq within each epoch, epochs as they first came. */
function inSeqOrder(frames) {
  const byEpoch = new Map();
  for (const msg of frames) {
    const { epoch } = positionOf(msg);
    if (!byEpoch.has(epoch)) byEpoch.set(epoch, []);
    byEpoch.get(epoch).push(msg);
  }
  return [...byEpoch.values()].flatMap((list) => list.sort((a, b) => a.meta.seq - b.meta.seq));
}

/**
 * Where the app's copy of each stream ends, and the recoveries in flight. No I/O: the client
 * feeds it frames and replies and acts on what it answers.
 */
class Positions {
  #at = new Map(); // stream -> {epoch, seq} of the last message handed to the app
  #inflight = new Map(); // stream -> {reason, buffer, overflow, again}
  #rebase = new Set(); // streams whose recovery failed: their next message starts afresh
  #limit;

  constructor(limit) {
    this.#limit = limit;
  }

  /** Plain object {stream: {epoch, seq}}, as sent in `recover` and stored. */
  toJSON() {
    return Object.fromEntries(this.#at);
  }

  /** Positions kept by a previous page; ignored for streams already positioned here. */
  load(stored) {
    for (const [stream, position] of Object.entries(stored)) {
      if (!this.#at.has(stream)) this.#at.set(stream, position);
    }
  }

  clear() {
    this.#at.clear();
    this.#inflight.clear();
    this.#rebase.clear();
  }

  forget(stream) {
    this.#at.delete(stream);
    this.#inflight.delete(stream);
    this.#rebase.delete(stream);
  }

  /** The socket is gone: replies will never come. Held frames go too; positions did not move. */
  abandon() {
    this.#inflight.clear();
  }

  get inflight() {
    return [...this.#inflight.keys()];
  }

  /**
   * What to do with a stream frame: "deliver", "duplicate" (drop it), "held" (a recovery of
   * its stream is in flight), "gap" (held; recover from `position` now), or "epoch" (deliver;
   * the producer's numbering restarted, so what came before cannot be recovered).
   */
  receive(msg) {
    const next = positionOf(msg);
    if (next === null) return { verdict: "deliver" };
    const stream = msg.stream;
    const pending = this.#inflight.get(stream);
    if (pending) {
      if (pending.buffer.length >= this.#limit) {
        pending.overflow = true;
        pending.buffer = [];
      } else if (!pending.overflow) pending.buffer.push(msg);
      return { verdict: "held" };
    }
    const last = this.#at.get(stream);
    if (!last || this.#rebase.has(stream)) {
      this.#rebase.delete(stream);
      this.#at.set(stream, next);
      return { verdict: "deliver" };
    }
    if (next.epoch !== last.epoch) {
      this.#at.set(stream, next);
      return { verdict: "epoch" };
    }
    if (next.seq <= last.seq) return { verdict: "duplicate" };
    if (next.seq === last.seq + 1) {
      this.#at.set(stream, next);
      return { verdict: "deliver" };
    }
    this.#inflight.set(stream, { reason: "gap", buffer: [msg], overflow: false, again: null });
    return { verdict: "gap", position: last };
  }

  /**
   * Start recovering `streams`. Returns `recover` ({stream: position} to send) and
   * `unpositioned` (nothing to recover from: the app must refetch them).
   */
  start(streams, reason) {
    const recover = {};
    const unpositioned = [];
    for (const stream of streams) {
      const pending = this.#inflight.get(stream);
      if (pending) pending.again = reason; // may have missed more since it was asked: ask again after
      else if (this.#at.has(stream) && !this.#rebase.has(stream)) {
        this.#inflight.set(stream, { reason, buffer: [], overflow: false, again: null });
        recover[stream] = this.#at.get(stream);
      } else unpositioned.push(stream);
    }
    return { recover, unpositioned };
  }

  /**
   * The edge answered (or the wait ran out) for `stream`. Returns null when no recovery of it
   * was in flight, else {recovered, reason, frames (to release in order), again}.
   */
  answer(stream, recovered) {
    const pending = this.#inflight.get(stream);
    if (!pending) return null;
    this.#inflight.delete(stream);
    const ok = recovered && !pending.overflow;
    if (!ok) this.#rebase.add(stream);
    return { recovered: ok, reason: pending.reason, frames: inSeqOrder(pending.buffer), again: pending.again };
  }
}

/** sessionStorage, or null where a browser refuses it (sandboxed frames, some privacy modes). */
function sessionStorageOrNull() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

/** Positions a previous page of this tab kept under `key`; {} when none or unreadable. */
function readPositions(storage, key) {
  const found = {};
  try {
    const stored = JSON.parse(storage?.getItem(key) ?? "{}");
    for (const [stream, value] of Object.entries(stored).slice(0, STORAGE_STREAMS)) {
      if (Array.isArray(value) && isPosition(value[0], value[1])) found[stream] = { epoch: value[0], seq: value[1] };
    }
  } catch {
    // unreadable: start without positions, the app refetches
  }
  return found;
}

/** Put `key` first in the index and drop the entries past STORAGE_ENTRIES. */
function touchPositions(storage, key) {
  try {
    let index = JSON.parse(storage.getItem(STORAGE_INDEX) ?? "[]");
    if (!Array.isArray(index)) index = [];
    index = [key, ...index.filter((k) => k !== key && typeof k === "string")];
    for (const old of index.splice(STORAGE_ENTRIES)) storage.removeItem(old);
    storage.setItem(STORAGE_INDEX, JSON.stringify(index));
  } catch {
    // storage full or refused: positions stay in memory only
  }
}

function writePositions(storage, key, positions) {
  try {
    const compact = Object.fromEntries(Object.entries(positions).map(([s, p]) => [s, [p.epoch, p.seq]]));
    storage.setItem(key, JSON.stringify(compact));
  } catch {
    // storage full or refused: positions stay in memory only
  }
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
  #recoveryListeners = new Set();
  #errorListeners = new Set();
  #positions;
  #userId = null;
  #storage;
  #storageKey = null;
  #publishes = new Map(); // frame id -> {resolve, reject, timer} of publishes awaiting the edge
  #publishCount = 0;

  /**
   * @param {object} options
   * @param {string} [options.url] full ws(s):// URL of the endpoint, or
   * @param {string} [options.path] a path on the page's host ("/ws" by default)
   * @param {string | ((ctx: {forceRefresh: boolean}) => string | Promise<string>)} options.token
   * @param {string[]} [options.streams] streams to hold from the first connect on
   * @param {boolean} [options.resume] keep positions in sessionStorage and recover from them
   *   after a page reload (for apps that keep what they show across a reload)
   * @param {Storage | null} [options.storage] where `resume` keeps them (sessionStorage)
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
    this.#positions = new Positions(this.#opts.recoveryBuffer);
    const storage = this.#opts.storage === undefined ? sessionStorageOrNull() : this.#opts.storage;
    this.#storage = this.#opts.resume ? storage : null;
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
    this.#forget(list);
    const promise = this.#waitFor(() => list.every((s) => !this.#held.has(s)));
    if (this.#state === State.OPEN) this.#send({ action: "unsubscribe", streams: list });
    return promise;
  }

  /**
   * Call `listener(message)` for frames of `stream` and `event` ("*" matches any). With
   * `{sessionId}`, only for frames whose `meta.session_id` is that id (one remote session,
   * e.g. one terminal, of several on a stream); without it, for every frame.
   * Returns a function that removes the listener.
   */
  on(stream, event, listener, { sessionId } = {}) {
    const key = `${stream}\u0000${event}`;
    const entry =
      sessionId === undefined ? listener : (msg) => msg.meta?.session_id === sessionId && listener(msg);
    if (!this.#listeners.has(key)) this.#listeners.set(key, new Set());
    this.#listeners.get(key).add(entry);
    return () => {
      const set = this.#listeners.get(key);
      set?.delete(entry);
      if (set?.size === 0) this.#listeners.delete(key);
    };
  }

  /**
   * Send a message to the backend of an interactive stream the connection holds. Resolves
   * with `{messageId}` once RabbitMQ has it in a backend's queue (the edge's `published`).
   * Rejects with an Error whose `code` is one of `PublishErrorCode`:
   * - the edge's refusals (FORBIDDEN, RATE_LIMITED, NO_HANDLER, UNAVAILABLE, INVALID_FRAME)
   *   and the client's own before sending (NOT_CONNECTED, TOO_LARGE): nothing was published;
   * - DISCONNECTED (the socket dropped or `close()` was called before the answer) and TIMEOUT
   *   (no answer within `timeout`, default `publishTimeout`): the message may or may not
   *   have reached a backend. Nothing is re-sent after a reconnect; retry yourself, with an
   *   id of your own in `data` if the backend must not see it twice.
   * `sessionId` lands in the message's `meta.session_id`.
   */
  publish(stream, event, data, { sessionId, timeout } = {}) {
    const fail = (code, message, id) =>
      Promise.reject(Object.assign(new Error(`realtime: ${message}`), { code, id }));
    if (this.#state !== State.OPEN || this.#ws?.readyState !== SOCKET_OPEN) {
      return fail(PublishErrorCode.NOT_CONNECTED, "not connected; publish once the state is open");
    }
    const id = `p${(++this.#publishCount).toString(36)}`;
    const frame = { action: "publish", stream, event, id };
    if (data !== undefined) frame.data = data;
    if (sessionId !== undefined) frame.session_id = sessionId;
    const text = JSON.stringify(frame);
    if (utf8.encode(text).length > this.#opts.maxFrameBytes) {
      return fail(PublishErrorCode.TOO_LARGE, `the message is over ${this.#opts.maxFrameBytes} bytes`, id);
    }
    return new Promise((resolve, reject) => {
      const ms = Math.min(timeout ?? this.#opts.publishTimeout, MAX_TIMER_MS);
      const timer = this.#opts.setTimeout(
        () => this.#settlePublish(id, PublishErrorCode.TIMEOUT, `no answer to publish ${id} within ${ms} ms`),
        ms,
      );
      this.#publishes.set(id, { resolve, reject, timer });
      try {
        this.#ws.send(text);
      } catch {
        this.#settlePublish(id, PublishErrorCode.DISCONNECTED, `the socket refused publish ${id}`);
        return;
      }
      this.#armIdlePing();
    });
  }

  /** `listener(state, detail)` on every state change; detail has code/delay when reconnecting. */
  onState(listener) {
    return this.#addTo(this.#stateListeners, listener);
  }

  /**
   * `listener({reason, streams})` when the app must refetch what it shows of `streams`: they
   * have no position to recover from (the first connect, streams without `meta.seq`), their
   * recovery failed, or their producer's numbering restarted (reason "epoch").
   */
  onResync(listener) {
    return this.#addTo(this.#resyncListeners, listener);
  }

  /**
   * `listener({stream, recovered, replayed, reason})` after each recovery, once the messages it
   * brought (`replayed` of them) were dispatched. `recovered: false` is followed by `onResync`.
   */
  onRecovery(listener) {
    return this.#addTo(this.#recoveryListeners, listener);
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
    if (msg.stream !== "system") {
      this.#accept(msg);
      return;
    }
    this.#system(msg);
    this.#dispatch(msg);
    if (msg.event === "resync") this.#recover(this.#held, "event");
  }

  // A stream frame: dispatched, dropped as a duplicate, or held while its stream recovers.
  #accept(msg) {
    const { verdict, position } = this.#positions.receive(msg);
    if (verdict === "duplicate" || verdict === "held") return false;
    if (verdict === "gap") {
      this.#askRecovery({ [msg.stream]: position });
      return false;
    }
    if (positionOf(msg)) this.#savePositions();
    this.#dispatch(msg);
    if (verdict === "epoch") this.#resync("epoch", [msg.stream]);
    return true;
  }

  // Recover the positioned `streams`; the others can only be refetched.
  #recover(streams, reason) {
    const { recover, unpositioned } = this.#positions.start(streams, reason);
    this.#askRecovery(recover);
    if (unpositioned.length) this.#resync(reason === "resume" ? "connect" : reason, unpositioned);
  }

  #askRecovery(recover) {
    const streams = Object.keys(recover);
    if (!streams.length) return;
    for (const s of streams) {
      this.#timer(`recovery:${s}`, this.#opts.recoveryTimeout, () => this.#recovered({ [s]: false }));
    }
    this.#send({ action: "subscribe", streams, recover });
  }

  // The edge said which streams it recovered: release what was held, then tell the app.
  #recovered(outcome) {
    const failed = new Map(); // reason -> streams
    const again = new Map();
    for (const [stream, ok] of Object.entries(outcome)) {
      const done = this.#positions.answer(stream, ok === true);
      if (!done) continue;
      this.#clearTimer(`recovery:${stream}`);
      let replayed = 0;
      for (const msg of done.frames) if (this.#accept(msg)) replayed += 1;
      const info = { stream, recovered: done.recovered, replayed, reason: done.reason };
      for (const listener of [...this.#recoveryListeners]) this.#call(listener, info);
      if (!done.recovered) failed.set(done.reason, [...(failed.get(done.reason) ?? []), stream]);
      if (done.again) again.set(done.again, [...(again.get(done.again) ?? []), stream]);
    }
    for (const [reason, streams] of failed) this.#resync(reason === "resume" ? "connect" : reason, streams);
    for (const [reason, streams] of again) this.#recover(streams, reason);
  }

  #forget(streams) {
    for (const s of streams) {
      this.#positions.forget(s);
      this.#clearTimer(`recovery:${s}`);
    }
    this.#savePositions();
  }

  // Whose positions these are, and why this connect recovers: "resume" (the first one, from a
  // previous page's positions), "reconnect", or "connect" (nothing of this user to go on).
  // Another user on this client (another token) never inherits the last one's positions.
  #identify(userId) {
    const first = !this.#connectedOnce;
    this.#connectedOnce = true;
    if (!first && userId === this.#userId) return "reconnect";
    this.#positions.clear();
    this.#userId = userId;
    if (!this.#storage) return "connect";
    const url = new URL(buildWebSocketUrl(this.#opts.url ?? this.#opts.path));
    this.#storageKey = `${STORAGE_INDEX}:${url.origin}${url.pathname}|${userId ?? ""}`;
    this.#positions.load(readPositions(this.#storage, this.#storageKey));
    touchPositions(this.#storage, this.#storageKey);
    return "resume";
  }

  #savePositions() {
    if (this.#storage && this.#storageKey) writePositions(this.#storage, this.#storageKey, this.#positions.toJSON());
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
        this.#recover(this.#held, this.#identify(data.user_id ?? null));
        break;
      case "subscribed":
        for (const r of data.rejected ?? []) {
          this.#wanted.delete(r.stream);
          this.#rejected.set(r.stream, r.code);
        }
        this.#forget((data.rejected ?? []).map((r) => r.stream));
        this.#setHeld(data.streams);
        if (data.recovered && typeof data.recovered === "object") this.#recovered(data.recovered);
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
        this.#forget(data.dropped ?? []);
        this.#setHeld(data.streams);
        this.#scheduleRefresh();
        break;
      case "token.expired":
        this.#needFreshToken = true;
        break;
      case "published":
        this.#settlePublish(data.id, null, data.message_id);
        break;
      case "error":
        if (this.#publishes.has(data.id)) this.#settlePublish(data.id, data.code, data.message);
        else this.#report(Object.assign(new Error(data.message ?? "realtime error"), { code: data.code }));
        break;
      default:
        break;
    }
  }

  // Settle the publish `id` (replies may come in any order): `code` null resolves with
  // `detail` as the message id, anything else rejects with `detail` as the message.
  #settlePublish(id, code, detail) {
    const pending = this.#publishes.get(id);
    if (!pending) return; // not ours, or already settled (timed out, disconnected)
    this.#publishes.delete(id);
    this.#opts.clearTimeout(pending.timer);
    if (code === null) pending.resolve({ messageId: detail });
    else pending.reject(Object.assign(new Error(`realtime: ${detail ?? code}`), { code, id }));
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

  #resync(reason, streams) {
    for (const listener of [...this.#resyncListeners]) this.#call(listener, { reason, streams });
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
    for (const s of this.#positions.inflight) this.#clearTimer(`recovery:${s}`);
    this.#positions.abandon(); // held frames are recovered again from the unchanged positions
    for (const id of [...this.#publishes.keys()]) {
      this.#settlePublish(id, PublishErrorCode.DISCONNECTED, `the connection dropped before publish ${id} was answered`);
    }
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
