// Unit tests of realtime.js's client messages: publish settled by the edge's reply (matched
// by id), refused at once when it cannot be sent, never left pending; and session routing.
import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { RealtimeClient } from "../../services/ws-edge/src/realtime_edge/static/realtime.js";
import { FakeClock, FakeWebSocket, fakeToken, flush } from "./fakes.mjs";

let clock;

function makeClient(options = {}) {
  const errors = [];
  const client = new RealtimeClient({
    url: "ws://edge.test/ws",
    token: () => fakeToken("alice", Math.floor(clock.now() / 1000) + 3600),
    streams: ["chat", "ssh"],
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    storage: null,
    ...options,
  });
  client.onError((error) => errors.push(error));
  return { client, errors };
}

async function open(client) {
  client.connect();
  await flush();
  FakeWebSocket.last.accept();
  return FakeWebSocket.last;
}

function publishFrames(ws) {
  return ws.sent.filter((f) => f.action === "publish");
}

/** How a Promise ended so far: "pending", {value} or {error}. */
function track(promise) {
  const state = { outcome: "pending" };
  promise.then(
    (value) => (state.outcome = { value }),
    (error) => (state.outcome = { error }),
  );
  return state;
}

function published(id, messageId) {
  return { stream: "system", event: "published", data: { id, message_id: messageId } };
}

function refused(id, code, message = "no") {
  return { stream: "system", event: "error", data: { code, message, id } };
}

beforeEach(() => {
  clock = new FakeClock();
  FakeWebSocket.reset();
});

describe("publish", () => {
  test("sends the frame and resolves with the message id once the edge says published", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const timers = clock.pending;
    const sent = track(client.publish("chat", "message.send", { text: "hi" }, { sessionId: "room-7" }));
    const [frame] = publishFrames(ws);
    assert.deepEqual(frame, {
      action: "publish",
      stream: "chat",
      event: "message.send",
      data: { text: "hi" },
      session_id: "room-7",
      id: frame.id,
    });
    assert.ok(typeof frame.id === "string" && frame.id.length > 0 && frame.id.length <= 64);
    await flush();
    assert.equal(sent.outcome, "pending");
    ws.deliver(published(frame.id, "m-1"));
    await flush();
    assert.deepEqual(sent.outcome, { value: { messageId: "m-1" } });
    assert.equal(clock.pending, timers, "the publish's timeout timer is gone");
  });

  test("leaves out data and session_id when not given", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    client.publish("ssh", "keys");
    assert.deepEqual(Object.keys(publishFrames(ws)[0]).sort(), ["action", "event", "id", "stream"]);
  });

  test("rejects with the error frame's code and message, and does not report it twice", async () => {
    const { client, errors } = makeClient();
    const ws = await open(client);
    const sent = track(client.publish("chat", "message.send", {}));
    ws.deliver(refused(publishFrames(ws)[0].id, "RATE_LIMITED", "too many messages; slow down"));
    await flush();
    assert.equal(sent.outcome.error.code, "RATE_LIMITED");
    assert.match(sent.outcome.error.message, /too many messages/);
    assert.equal(sent.outcome.error.id, publishFrames(ws)[0].id);
    assert.deepEqual(errors, []);
  });

  test("matches replies by id when they come out of order", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const outcomes = ["a", "b", "c"].map((text) => track(client.publish("chat", "message.send", { text })));
    const ids = publishFrames(ws).map((f) => f.id);
    assert.equal(new Set(ids).size, 3, "every publish has its own id");
    ws.deliver(published(ids[2], "m-c"));
    ws.deliver(refused(ids[0], "NO_HANDLER"));
    ws.deliver(published(ids[1], "m-b"));
    await flush();
    assert.equal(outcomes[0].outcome.error.code, "NO_HANDLER");
    assert.deepEqual(outcomes[1].outcome, { value: { messageId: "m-b" } });
    assert.deepEqual(outcomes[2].outcome, { value: { messageId: "m-c" } });
  });

  test("an error frame without a publish's id is reported, and settles no publish", async () => {
    const { client, errors } = makeClient();
    const ws = await open(client);
    const sent = track(client.publish("chat", "message.send", {}));
    ws.deliver({ stream: "system", event: "error", data: { code: "INVALID_JSON", message: "bad" } });
    await flush();
    assert.equal(sent.outcome, "pending");
    assert.deepEqual(
      errors.map((e) => e.code),
      ["INVALID_JSON"],
    );
  });

  test("rejects at once, sending nothing, when not connected", async () => {
    const { client } = makeClient();
    await assert.rejects(client.publish("chat", "message.send", {}), { code: "NOT_CONNECTED" });
    const ws = await open(client);
    ws.drop(1006);
    await assert.rejects(client.publish("chat", "message.send", {}), { code: "NOT_CONNECTED" });
    assert.deepEqual(publishFrames(ws), []);
  });

  test("pending publishes are rejected when the socket drops, and not sent again", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const sent = track(client.publish("chat", "message.send", {}));
    ws.drop(1006);
    await flush();
    assert.equal(sent.outcome.error.code, "DISCONNECTED");
    await clock.tick(500);
    const next = FakeWebSocket.last;
    assert.notEqual(next, ws);
    next.accept();
    ws.deliver(published(publishFrames(ws)[0].id, "late")); // a reply cannot outlive its socket
    assert.deepEqual(publishFrames(next), []);
  });

  test("close() rejects what is pending", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const sent = track(client.publish("chat", "message.send", {}));
    client.close();
    await flush();
    assert.equal(sent.outcome.error.code, "DISCONNECTED");
    assert.equal(ws.closed.code, 1000);
  });

  test("a lost reply rejects with TIMEOUT after publishTimeout, and a late one changes nothing", async () => {
    const { client, errors } = makeClient({ publishTimeout: 3_000, pingInterval: 60_000 });
    const ws = await open(client);
    const sent = track(client.publish("chat", "message.send", {}));
    const short = track(client.publish("chat", "message.send", {}, { timeout: 1_000 }));
    await clock.tick(999);
    assert.equal(short.outcome, "pending");
    await clock.tick(1);
    assert.equal(short.outcome.error.code, "TIMEOUT");
    await clock.tick(1_999);
    assert.equal(sent.outcome, "pending");
    await clock.tick(1);
    assert.equal(sent.outcome.error.code, "TIMEOUT");
    ws.deliver(published(publishFrames(ws)[0].id, "late"));
    await flush();
    assert.equal(sent.outcome.error.code, "TIMEOUT");
    assert.deepEqual(errors, []);
    assert.equal(client.state, "open");
  });

  test("a frame over maxFrameBytes is refused before sending, and the connection stays", async () => {
    const { client } = makeClient({ maxFrameBytes: 200 });
    const ws = await open(client);
    await assert.rejects(client.publish("chat", "message.send", { text: "é".repeat(80) }), {
      code: "TOO_LARGE",
    });
    assert.deepEqual(publishFrames(ws), []);
    assert.equal(client.state, "open");
    client.publish("chat", "message.send", { text: "é".repeat(40) });
    assert.equal(publishFrames(ws).length, 1);
  });
});

describe("session routing", () => {
  test("a listener with a sessionId hears only that session's frames", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const heard = { t1: [], t2: [], all: [] };
    client.on("ssh", "output", (m) => heard.t1.push(m.data.n), { sessionId: "t1" });
    const offT2 = client.on("ssh", "*", (m) => heard.t2.push(m.data.n), { sessionId: "t2" });
    client.on("ssh", "output", (m) => heard.all.push(m.data.n));
    const frame = (n, meta) => ({ stream: "ssh", event: "output", data: { n }, ...(meta ? { meta } : {}) });
    ws.deliver(frame(1, { session_id: "t1" }));
    ws.deliver(frame(2, { session_id: "t2" }));
    ws.deliver(frame(3));
    ws.deliver({ stream: "chat", event: "output", data: { n: 4 }, meta: { session_id: "t1" } });
    offT2();
    ws.deliver(frame(5, { session_id: "t2" }));
    assert.deepEqual(heard, { t1: [1], t2: [2], all: [1, 2, 3, 5] });
  });

  test("a session's publish and its replies meet by session id", async () => {
    const { client } = makeClient();
    const ws = await open(client);
    const output = [];
    client.on("ssh", "output", (m) => output.push(m.data.text), { sessionId: "t2" });
    client.publish("ssh", "keys", { text: "ls\n" }, { sessionId: "t2" });
    assert.equal(publishFrames(ws)[0].session_id, "t2");
    ws.deliver({ stream: "ssh", event: "output", data: { text: "a.txt" }, meta: { session_id: "t2" } });
    ws.deliver({ stream: "ssh", event: "output", data: { text: "other" }, meta: { session_id: "t1" } });
    assert.deepEqual(output, ["a.txt"]);
  });
});
