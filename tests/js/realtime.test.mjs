// Unit tests of realtime.js: URL building, backoff bounds, dispatch, the reconnect policy.
// Run with `node --test tests/js/` (tests/clients/test_realtime_js.py runs it under pytest).
import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import {
  RealtimeClient,
  backoffDelay,
  buildWebSocketUrl,
  tokenExpiry,
} from "../../services/ws-edge/src/realtime_edge/static/realtime.js";
import { FakeClock, FakeWebSocket, fakeToken, flush } from "./fakes.mjs";

let clock;

function makeClient(options = {}) {
  const calls = [];
  const client = new RealtimeClient({
    url: "ws://edge.test/ws",
    token: (ctx) => {
      calls.push(ctx);
      return fakeToken("alice", Math.floor(clock.now() / 1000) + 3600);
    },
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    ...options,
  });
  client.onError(() => {}); // keep expected protocol errors out of the test output
  return { client, calls };
}

async function connected(client, streams) {
  client.connect();
  await flush();
  FakeWebSocket.last.accept(streams);
  assert.equal(client.state, "open");
  return FakeWebSocket.last;
}

beforeEach(() => {
  clock = new FakeClock();
  FakeWebSocket.reset();
});

describe("buildWebSocketUrl", () => {
  test("uses ws: on an http: page and wss: on an https: page", () => {
    assert.equal(
      buildWebSocketUrl("/ws", {}, { href: "http://localhost:8080/demo" }),
      "ws://localhost:8080/ws",
    );
    assert.equal(
      buildWebSocketUrl("/ws", {}, { href: "https://app.example.com/" }),
      "wss://app.example.com/ws",
    );
  });

  test("encodes parameters, repeats arrays and leaves out null values", () => {
    const url = new URL(
      buildWebSocketUrl(
        "/ws/chat",
        { stream: ["a", "b"], token: "x y&z", skipped: null },
        { href: "http://h/" },
      ),
    );
    assert.equal(url.pathname, "/ws/chat");
    assert.deepEqual(url.searchParams.getAll("stream"), ["a", "b"]);
    assert.equal(url.searchParams.get("token"), "x y&z");
    assert.equal(url.searchParams.has("skipped"), false);
  });

  test("keeps a full ws URL as it is", () => {
    assert.equal(buildWebSocketUrl("wss://edge.example.com/ws", {}, undefined), "wss://edge.example.com/ws");
  });
});

describe("backoffDelay", () => {
  test("full jitter stays within [0, min(cap, base * 2^attempt))", () => {
    for (let attempt = 0; attempt < 20; attempt++) {
      const ceiling = Math.min(30_000, 500 * 2 ** attempt);
      assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
      assert.ok(backoffDelay(attempt, { random: () => 0.999999 }) < ceiling);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt);
        assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} outside [0, ${ceiling})`);
      }
    }
  });

  test("the first retry is well under a second and later ones are capped near 30 s", () => {
    assert.ok(backoffDelay(0, { random: () => 0.999999 }) < 500);
    assert.equal(backoffDelay(50, { random: () => 0.5 }), 15_000);
  });

  test("the delays are spread, not synchronized", () => {
    const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(6)));
    assert.ok(seen.size > 40);
  });
});

test("tokenExpiry reads exp and gives null for a non-JWT", () => {
  assert.equal(tokenExpiry(fakeToken("zoë", 1234)), 1234);
  assert.equal(tokenExpiry("not a token"), null);
});

describe("connecting", () => {
  test("is open only once the edge says connected, with the wanted streams in the URL", async () => {
    const { client, calls } = makeClient({ streams: ["notifications", "Chat "] });
    const states = [];
    client.onState((s) => states.push(s));
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    assert.equal(ws.url.searchParams.get("streams"), "notifications,chat");
    assert.equal(tokenExpiry(ws.url.searchParams.get("token")) > 0, true);
    assert.equal(calls.length, 1);
    ws.readyState = 1;
    assert.equal(client.state, "connecting");
    ws.accept();
    assert.equal(client.state, "open");
    assert.deepEqual(client.streams, ["notifications", "chat"]);
    assert.deepEqual(states.at(-1), "open");
  });

  test("a static string token works too", async () => {
    const { client } = makeClient({ token: "static-token" });
    await connected(client);
    assert.equal(FakeWebSocket.last.url.searchParams.get("token"), "static-token");
  });
});

describe("dispatch", () => {
  test("routes by stream and event, with * wildcards, and listeners can be removed", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    const got = [];
    const off = client.on("notifications", "notification.created", (m) => got.push(["exact", m.data.n]));
    client.on("notifications", "*", (m) => got.push(["stream", m.event]));
    client.on("*", "notification.read", () => got.push(["event"]));
    client.on("chat", "*", () => got.push(["chat"]));

    ws.deliver({ stream: "notifications", event: "notification.created", data: { n: 1 } });
    ws.deliver({ stream: "notifications", event: "notification.read" });
    off();
    ws.deliver({ stream: "notifications", event: "notification.created", data: { n: 2 } });

    assert.deepEqual(got, [
      ["exact", 1],
      ["stream", "notification.created"],
      ["stream", "notification.read"],
      ["event"],
      ["stream", "notification.created"],
    ]);
  });

  test("a throwing listener is reported and does not stop the others", async () => {
    const { client } = makeClient();
    const errors = [];
    client.onError((e) => errors.push(e.message));
    const ws = await connected(client);
    const got = [];
    client.on("notifications", "*", () => {
      throw new Error("app bug");
    });
    client.on("*", "*", (m) => got.push(m.event));
    ws.deliver({ stream: "notifications", event: "x" });
    assert.deepEqual(got, ["x"]);
    assert.deepEqual(errors, ["app bug"]);
  });

  test("bad frames are reported, not dispatched, and keep the connection", async () => {
    const { client } = makeClient();
    const errors = [];
    client.onError((e) => errors.push(e.message));
    const ws = await connected(client);
    let count = 0;
    client.on("*", "*", () => count++);
    ws.deliver("{not json");
    ws.deliver({ hello: 1 });
    assert.equal(count, 0);
    assert.equal(errors.length, 2);
    assert.equal(client.state, "open");
  });

  test("the resync listener runs on connect, on the resync event and after every reconnect", async () => {
    const { client } = makeClient();
    const reasons = [];
    client.onResync(({ reason }) => reasons.push(reason));
    const ws = await connected(client);
    ws.deliver({ stream: "system", event: "resync" });
    ws.drop(1001);
    await clock.tick(500);
    FakeWebSocket.last.accept();
    assert.deepEqual(reasons, ["connect", "event", "reconnect"]);
  });
});

describe("reconnecting", () => {
  test("calls the token provider again and re-subscribes everything it held", async () => {
    const { client, calls } = makeClient();
    const ws = await connected(client);
    const done = client.subscribe(["chat"]);
    assert.deepEqual(ws.sent.at(-1), { action: "subscribe", streams: ["chat"] });
    ws.deliver({ stream: "system", event: "subscribed", data: { streams: ["notifications", "chat"] } });
    assert.deepEqual(await done, ["notifications", "chat"]);

    ws.drop(1001, "server shutting down");
    assert.equal(client.state, "connecting");
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.ok(clock.nextDelay() < 500, "the first retry comes well under a second");
    await clock.tick(500);

    const again = FakeWebSocket.last;
    assert.notEqual(again, ws);
    assert.equal(again.url.searchParams.get("streams"), "notifications,chat");
    assert.equal(calls.length, 2);
    again.accept();
    assert.equal(client.state, "open");
  });

  test("a subscribe made while connecting is sent once the edge is ready", async () => {
    const { client } = makeClient();
    client.connect();
    await flush();
    const done = client.subscribe("ssh");
    const ws = FakeWebSocket.last;
    ws.readyState = 1;
    ws.deliver({ stream: "system", event: "connected", data: { streams: ["notifications"] } });
    assert.deepEqual(ws.sent, [{ action: "subscribe", streams: ["ssh"] }]);
    ws.deliver({ stream: "system", event: "subscribed", data: { streams: ["notifications", "ssh"] } });
    assert.deepEqual(await done, ["notifications", "ssh"]);
  });

  test("streams the edge rejects are not asked for again", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    const done = client.subscribe(["nope", "chat"]);
    ws.deliver({
      stream: "system",
      event: "subscribed",
      data: { streams: ["notifications", "chat"], rejected: [{ stream: "nope", code: "NOT_FOUND" }] },
    });
    await assert.rejects(done, (error) => {
      assert.deepEqual(error.rejected, [{ stream: "nope", code: "NOT_FOUND" }]);
      return true;
    });
    assert.deepEqual(client.streams, ["notifications", "chat"]);
    ws.drop(1006);
    await clock.tick(500);
    assert.equal(FakeWebSocket.last.url.searchParams.get("streams"), "notifications,chat");
  });

  test("backs off exponentially while failing and resets after a stable connection", async () => {
    const { client } = makeClient({ random: () => 1 - 1e-9 });
    await connected(client);
    const delays = [];
    for (let i = 0; i < 8; i++) {
      FakeWebSocket.last.drop(1006);
      delays.push(clock.nextDelay());
      await clock.tick(clock.nextDelay());
    }
    assert.deepEqual(
      delays.map((d) => d + 1),
      [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
    );
    FakeWebSocket.last.accept();
    await clock.tick(10_000);
    FakeWebSocket.last.drop(1006);
    assert.ok(clock.nextDelay() < 500, "after a stable connection the next retry is fast again");
  });

  test("a close the edge means as final (1000, 1008, 1009) ends the client", async () => {
    for (const code of [1000, 1008, 1009]) {
      const { client } = makeClient();
      const ws = await connected(client);
      const details = [];
      client.onState((state, detail) => details.push([state, detail.code]));
      ws.drop(code, "bye");
      await clock.tick(60_000);
      assert.equal(client.state, "closed");
      assert.deepEqual(details, [["closed", code]]);
      assert.equal(FakeWebSocket.last, ws);
      assert.equal(clock.pending, 0);
    }
  });

  test("a failing token provider is retried with backoff", async () => {
    let fail = true;
    const errors = [];
    const { client } = makeClient({
      token: async () => {
        if (fail) throw new Error("auth server down");
        return fakeToken("alice", 9_999_999_999);
      },
    });
    client.onError((e) => errors.push(e.message));
    client.connect();
    await flush();
    assert.deepEqual(errors, ["auth server down"]);
    assert.equal(FakeWebSocket.instances.length, 0);
    fail = false;
    await clock.tick(500);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("a URL that cannot be built is reported, not thrown at the page", async () => {
    const { client } = makeClient({ url: "not a url" });
    const errors = [];
    client.onError((e) => errors.push(e));
    client.connect();
    await flush();
    assert.equal(errors.length, 1);
    assert.equal(FakeWebSocket.instances.length, 0);
    assert.equal(client.state, "connecting");
  });

  test("a handshake that never reaches `connected` is abandoned and retried", async () => {
    const { client } = makeClient();
    client.connect();
    await flush();
    const ws = FakeWebSocket.last;
    await clock.tick(15_000);
    assert.ok(ws.closed);
    await clock.tick(1_000);
    assert.equal(FakeWebSocket.instances.length, 2);
  });
});

describe("close()", () => {
  test("stops for good: no reconnect, no timer, no socket listener left", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    const states = [];
    client.onState((s) => states.push(s));
    client.close();
    assert.equal(client.state, "closed");
    assert.deepEqual(ws.closed, { code: 1000, reason: "client closed" });
    assert.equal(ws.onmessage, null);
    assert.equal(ws.onclose, null);
    assert.equal(clock.pending, 0);
    ws.drop(1006);
    await clock.tick(120_000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(states, ["closed"]);
  });

  test("during a backoff wait cancels the pending reconnect", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    ws.drop(1006);
    assert.equal(clock.pending, 1);
    client.close();
    assert.equal(clock.pending, 0);
    await clock.tick(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test("while the token provider is pending opens no socket", async () => {
    let release;
    const { client } = makeClient({
      token: () =>
        new Promise((resolve) => {
          release = resolve;
        }),
    });
    client.connect();
    client.close();
    release(fakeToken("alice", 9_999_999_999));
    await flush();
    assert.equal(FakeWebSocket.instances.length, 0);
    assert.equal(clock.pending, 0);
  });

  test("rejects subscriptions still waiting", async () => {
    const { client } = makeClient();
    client.connect();
    const done = client.subscribe("chat");
    client.close();
    await assert.rejects(done, /closed/);
  });
});

describe("keeping the connection alive", () => {
  test("pings when idle and reconnects when nothing answers", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    await clock.tick(25_000);
    assert.deepEqual(ws.sent.at(-1), { action: "ping" });
    ws.deliver({ stream: "system", event: "pong" });
    await clock.tick(25_000);
    assert.deepEqual(ws.sent.at(-1), { action: "ping" });
    await clock.tick(10_000);
    assert.deepEqual(ws.closed?.code, 4000);
    assert.equal(client.state, "connecting");
    await clock.tick(500);
    assert.equal(FakeWebSocket.instances.length, 2);
  });

  test("traffic postpones the ping", async () => {
    const { client } = makeClient();
    const ws = await connected(client);
    for (let i = 0; i < 5; i++) {
      await clock.tick(20_000);
      ws.deliver({ stream: "notifications", event: "x" });
    }
    assert.deepEqual(ws.sent, []);
  });

  test("refreshes the token before exp with the refresh action", async () => {
    const ttl = 60;
    const { client, calls } = makeClient({
      pingInterval: 3_600_000, // keep pings out of the way
      token: (ctx) => {
        calls.push(ctx);
        return fakeToken("alice", Math.floor(clock.now() / 1000) + ttl);
      },
    });
    const ws = await connected(client);
    await clock.tick(44_000);
    assert.equal(ws.sent.filter((f) => f.action === "refresh").length, 0);
    await clock.tick(2_000);
    const refresh = ws.sent.find((f) => f.action === "refresh");
    assert.ok(refresh, "a refresh is sent a quarter of the lifetime before exp");
    assert.deepEqual(calls.at(-1), { forceRefresh: true });
    assert.ok(tokenExpiry(refresh.token) > tokenExpiry(ws.url.searchParams.get("token")));
    ws.deliver({ stream: "system", event: "refreshed", data: { exp: tokenExpiry(refresh.token) } });
    assert.equal(client.state, "open");
  });

  test("streams a refreshed token no longer allows are dropped and not asked for again", async () => {
    const { client } = makeClient({ streams: ["notifications", "chat"] });
    const ws = await connected(client, ["notifications", "chat"]);
    ws.deliver({
      stream: "system",
      event: "refreshed",
      data: { exp: 2_000_000_000, streams: ["notifications"], dropped: ["chat"] },
    });
    assert.deepEqual(client.streams, ["notifications"]);
    ws.drop(1001, "server shutting down");
    await clock.tick(500);
    assert.equal(FakeWebSocket.last.url.searchParams.get("streams"), "notifications");
  });

  test("4001 means: get a new token, then reconnect", async () => {
    const { client, calls } = makeClient();
    const ws = await connected(client);
    ws.deliver({ stream: "system", event: "token.expired" });
    ws.drop(4001, "token expired");
    await clock.tick(500);
    assert.equal(FakeWebSocket.instances.length, 2);
    assert.deepEqual(calls.at(-1), { forceRefresh: true });
  });
});
