// Type declarations for realtime.js (served at /static/realtime.js).

/** One frame from the edge: the contract's envelope. */
export interface RealtimeMessage<T = Record<string, unknown>, M = Record<string, unknown>> {
  stream: string;
  event: string;
  /** Omitted by the edge when empty. */
  data?: T;
  /**
   * Omitted by the edge when empty; notification events carry `event_id` and `occurred_at`.
   * Recoverable streams' per-user messages also carry `seq` and `epoch` (see `Position`).
   */
  meta?: M;
}

/** Where a stream's copy ends: the last message's `meta.epoch` and `meta.seq`. */
export interface Position {
  epoch: string;
  seq: number;
}

export type ConnectionState = "connecting" | "open" | "closed";

export interface StateDetail {
  /** Close code of the connection that was lost (4001: token expired). */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt. */
  delay?: number;
  attempt?: number;
}

/** Why the client recovered, or why the app must refetch. */
export type SyncReason =
  /** The first connection (of this client, or of a new user on it): nothing to recover from. */
  | "connect"
  /** The first connection, recovering from the positions a previous page kept (`resume`). */
  | "resume"
  /** After a dropped connection. */
  | "reconnect"
  /** The edge sent `resync`: it lost RabbitMQ for a while. */
  | "event"
  /** A live `seq` skipped a number. */
  | "gap";

export interface ResyncInfo {
  /**
   * Why the streams cannot be recovered: what triggered the failed or impossible recovery
   * ("resume" shows as "connect"), or "epoch": the producer's numbering restarted.
   */
  reason: Exclude<SyncReason, "resume"> | "epoch";
  /** The streams to refetch. */
  streams: string[];
}

export interface RecoveryInfo {
  stream: string;
  /** False: nothing historical was sent (history gone, epoch changed, owner down...); `onResync` follows. */
  recovered: boolean;
  /** Messages of `stream` this recovery dispatched (missed ones, and live ones held meanwhile). */
  replayed: number;
  reason: Exclude<SyncReason, "connect">;
}

export interface TokenContext {
  /** True after the edge closed with 4001 or before exp: do not hand back a cached token. */
  forceRefresh: boolean;
}

export type TokenProvider = string | ((ctx: TokenContext) => string | Promise<string>);

export interface RealtimeOptions {
  /** Full ws(s):// URL of the endpoint. */
  url?: string;
  /** Path on the page's host, used when `url` is not given ("/ws"). */
  path?: string;
  /** Called before every connect and before `exp`; a string is used as is. */
  token: TokenProvider;
  /** Streams to hold from the first connect on (["notifications"]). */
  streams?: string[];
  /**
   * Keep positions in sessionStorage (per edge and user) and, on the first connect, recover
   * from those a previous page of this tab kept. Only for apps that also keep what they show
   * across a reload: the others need the first connect's `onResync` (default false).
   */
  resume?: boolean;
  /** Where `resume` keeps positions (sessionStorage); null keeps them in memory only. */
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem"> | null;
  recoveryTimeout?: number;
  recoveryBuffer?: number;
  /** Milliseconds a `publish` waits for the edge's answer before rejecting with TIMEOUT (10 s). */
  publishTimeout?: number;
  /** Larger `publish` frames are refused with TOO_LARGE instead of being sent (65536). */
  maxFrameBytes?: number;
  backoffBase?: number;
  backoffCap?: number;
  stableAfter?: number;
  pingInterval?: number;
  pongTimeout?: number;
  connectTimeout?: number;
  refreshMargin?: number;
  /** For tests: a WebSocket implementation, timers, clock and random source. */
  WebSocket?: new (url: string) => WebSocket;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  now?: () => number;
  random?: () => number;
}

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  /** Sent by the edge at the token's `exp`: the client gets a new token, then reconnects. */
  TOKEN_EXPIRED: 4001;
  /** Used by the client when it drops a socket that stopped answering pings. */
  NO_PONG: 4000;
  /** The edge refused the client on purpose: the client stops (state "closed"), no retry. */
  POLICY_VIOLATION: 1008;
  /** A client frame was over the edge's limit: the client stops, a retry would repeat it. */
  MESSAGE_TOO_BIG: 1009;
}>;

/**
 * `code` of a rejected `publish`. The edge's refusals and NOT_CONNECTED / TOO_LARGE mean
 * nothing was published; DISCONNECTED and TIMEOUT mean it may or may not have been.
 */
export type PublishErrorCode =
  /** Not an interactive stream, not held, or not in the token's `publish` claim. */
  | "FORBIDDEN"
  /** The connection's token bucket is empty: retry later, with backoff. */
  | "RATE_LIMITED"
  /** No backend consumes this stream right now. */
  | "NO_HANDLER"
  /** The edge could not reach RabbitMQ: retry with backoff. */
  | "UNAVAILABLE"
  /** `event`, `data` or `sessionId` of the wrong shape. */
  | "INVALID_FRAME"
  /** Not sent: the client is not connected. */
  | "NOT_CONNECTED"
  /** Not sent: the frame is over `maxFrameBytes`. */
  | "TOO_LARGE"
  /** Sent, then the socket dropped (or `close()`) before the answer: fate unknown. */
  | "DISCONNECTED"
  /** Sent, and no answer within the timeout: fate unknown. */
  | "TIMEOUT";

export declare const PublishErrorCode: Readonly<{ [C in PublishErrorCode]: C }>;

/** What a `publish` Promise rejects with. */
export interface PublishFailure extends Error {
  code: PublishErrorCode;
  /** The frame's id (absent for NOT_CONNECTED: nothing was built). */
  id?: string;
}

export interface PublishOptions {
  /** Lands in the message's `meta.session_id`: which remote session (a terminal) it is for. */
  sessionId?: string;
  /** Milliseconds to wait for the edge's answer (`publishTimeout`, 10 s). */
  timeout?: number;
}

export interface PublishResult {
  /** The id RabbitMQ has the message under (the backend sees it as `meta.message_id`). */
  messageId: string;
}

export interface ListenerOptions {
  /** Only frames whose `meta.session_id` is this id (one remote session of several). */
  sessionId?: string;
}

export declare const State: Readonly<{ CONNECTING: "connecting"; OPEN: "open"; CLOSED: "closed" }>;

export declare const DEFAULTS: Readonly<Required<
  Pick<
    RealtimeOptions,
    | "backoffBase"
    | "backoffCap"
    | "stableAfter"
    | "pingInterval"
    | "pongTimeout"
    | "connectTimeout"
    | "refreshMargin"
    | "recoveryTimeout"
    | "recoveryBuffer"
    | "publishTimeout"
    | "maxFrameBytes"
  >
>>;

export declare function buildWebSocketUrl(
  path: string,
  params?: Record<string, string | number | boolean | null | undefined | Array<string | number>>,
  location?: { href: string },
): string;

export declare function backoffDelay(
  attempt: number,
  options?: { base?: number; cap?: number; random?: () => number },
): number;

export declare function tokenExpiry(token: string): number | null;

export declare class RealtimeClient {
  constructor(options: RealtimeOptions);
  readonly state: ConnectionState;
  /** Streams the edge confirmed for the current connection. */
  readonly streams: string[];
  connect(): this;
  /** Close for good: no reconnect afterwards. */
  close(): void;
  /** Resolves with all streams held; rejects with `error.rejected` if the edge refused some. */
  subscribe(streams: string | string[]): Promise<string[]>;
  unsubscribe(streams: string | string[]): Promise<string[]>;
  /**
   * "*" matches any stream or event; `{sessionId}` keeps only frames of that `meta.session_id`.
   * Returns a function that removes the listener.
   */
  on<T = Record<string, unknown>, M = Record<string, unknown>>(
    stream: string,
    event: string,
    listener: (message: RealtimeMessage<T, M>) => void,
    options?: ListenerOptions,
  ): () => void;
  /**
   * Send on an interactive stream the connection holds. Resolves once RabbitMQ has it in a
   * backend's queue; rejects with a `PublishFailure` (see `PublishErrorCode`).
   */
  publish<T = Record<string, unknown>>(
    stream: string,
    event: string,
    data?: T,
    options?: PublishOptions,
  ): Promise<PublishResult>;
  onState(listener: (state: ConnectionState, detail: StateDetail) => void): () => void;
  /** Refetch the listed streams: they have no position, their recovery failed, or their epoch changed. */
  onResync(listener: (info: ResyncInfo) => void): () => void;
  /** After each recovery, once what it brought was dispatched. */
  onRecovery(listener: (info: RecoveryInfo) => void): () => void;
  onError(listener: (error: Error & { code?: string }) => void): () => void;
}
