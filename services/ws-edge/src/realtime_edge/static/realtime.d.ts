// Type declarations for realtime.js (served at /static/realtime.js).

/** One frame from the edge: the contract's envelope. */
export interface RealtimeMessage<T = Record<string, unknown>, M = Record<string, unknown>> {
  stream: string;
  event: string;
  /** Omitted by the edge when empty. */
  data?: T;
  /** Omitted by the edge when empty; notification events carry `event_id` and `occurred_at`. */
  meta?: M;
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

export interface ResyncInfo {
  /** "connect": first connection; "reconnect": after a drop; "event": the edge asked. */
  reason: "connect" | "reconnect" | "event";
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
  TOKEN_EXPIRED: 4001;
  NO_PONG: 4000;
}>;

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
  /** "*" matches any stream or event. Returns a function that removes the listener. */
  on<T = Record<string, unknown>, M = Record<string, unknown>>(
    stream: string,
    event: string,
    listener: (message: RealtimeMessage<T, M>) => void,
  ): () => void;
  onState(listener: (state: ConnectionState, detail: StateDetail) => void): () => void;
  onResync(listener: (info: ResyncInfo) => void): () => void;
  onError(listener: (error: Error & { code?: string }) => void): () => void;
}
