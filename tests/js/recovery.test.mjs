// Unit tests of realtime.js's recovery: positions, recover after reconnect / resync / a gap,
// holding a stream back while it recovers, dedupe, epochs, and positions across a reload.
import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { RealtimeClient } from "../../services/ws-edge/src/realtime_edge/static/realtime.js";
import { FakeClock, FakeStorage, FakeWebSocket, fakeToken, flush } from "./fakes.mjs";

let clock;

/** A client whose app keeps what it is told: messages (as "stream:seq"), recoveries, resyncs. */
function makeClient(options = {}) {
  const client = new RealtimeClient({
    url: "ws://edge.test/ws",
    token: () => fakeToken("alice", Math.floor(clock.now() / 1000) + 3600),
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    storage: null,
    ...options,
  });
  const app = { got: [], recoveries: [], resyncs: [] };
  client.onError(() => {});
  client.on("notifications", "*", (m) => app.got.push(m.meta?.seq ?? m.event));
  client.onRecovery((info) => app.recoveries.push(info));
  client.onResync((info) => app.resyncs.push(info));
  return { client, app };
}

async function open(client, { streams, user } = {}) {
  if (client.state === "closed") client.connect();
  await flush();
  FakeWebSocket.last.accept(streams, user);
  return FakeWebSocket.last;
}

async function reconnect(client, options) {
  FakeWebSocket.last.drop(1001, "server shutting down");
  await clock.tick(500);
  return open(client, options);
}

function numbered(seq, epoch = "e1", stream = "notifications") {
  return { stream, event: "notification.created", data: { n: seq }, meta: { seq, epoch } };
}

function recoveredReply(recovered, streams = ["notifications"]) {
  return { stream: "system", event: "subscribed", data: { streams, recovered } };
}

function recoverFrames(ws) {
  return ws.sent.filter((f) => f.recover);
}

beforeEach(() => {
  clock = new FakeClock();
  FakeWebSocket.reset();
});

describe("after a reconnect", () => {
  test("recovers from the last position: replayed and live messages come once, in order", async () => {
    const { client, app } = makeClient();
    const first = await open(client);
    for (const seq of [1, 2, 3]) first.deliver(numbered(seq));
    assert.deepEqual(app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);

    const ws = await reconnect(client);
    assert.deepEqual(recoverFrames(ws), [
      { action: "subscribe", streams: ["notifications"], recover: { notifications: { epoch: "e1", seq: 3 } } },
    ]);
    // A live message sent before the edge read the frame, then the missed ones (one again).
    for (const seq of [6, 4, 5, 6]) ws.deliver(numbered(seq));
    assert.deepEqual(app.got, [1, 2, 3], "nothing of the stream is handed over before the reply");
    ws.deliver(recoveredReply({ notifications: true }));
    assert.deepEqual(app.got, [1, 2, 3, 4, 5, 6]);
    // What the edge held back comes after the reply; 6 was already sent.
    ws.deliver(numbered(6));
    ws.deliver(numbered(7));

    assert.deepEqual(app.got, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: true, replayed: 3, reason: "reconnect" }]);
    assert.equal(app.resyncs.length, 1, "no refetch after a recovery that worked");
  });

  test("a failed recovery tells the app to refetch, and the next message starts afresh", async () => {
    const { client, app } = makeClient();
    const first = await open(client);
    first.deliver(numbered(1));
    const ws = await reconnect(client);
    ws.deliver(numbered(40)); // live, before the edge read the frame: held, then handed over
    ws.deliver(recoveredReply({ notifications: false }));

    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: false, replayed: 1, reason: "reconnect" }]);
    assert.deepEqual(app.resyncs.at(-1), { reason: "reconnect", streams: ["notifications"] });
    ws.deliver(numbered(41));
    assert.deepEqual(app.got, [1, 40, 41]);
    assert.equal(recoverFrames(ws).length, 1, "40 after 1 is no gap to recover once recovery failed");
  });

  test("streams that never carried a position are refetched, the others recovered", async () => {
    const { client, app } = makeClient({ streams: ["notifications", "chat"] });
    const first = await open(client);
    first.deliver(numbered(1));
    first.deliver({ stream: "chat", event: "maintenance" }); // a broadcast: no seq
    const ws = await reconnect(client);
    assert.deepEqual(app.resyncs.at(-1), { reason: "reconnect", streams: ["chat"] });
    assert.deepEqual(recoverFrames(ws)[0].recover, { notifications: { epoch: "e1", seq: 1 } });
  });

  test("an edge that never answers a recovery does not hold the stream back for good", async () => {
    const { client, app } = makeClient();
    (await open(client)).deliver(numbered(1));
    const ws = await reconnect(client);
    ws.deliver(numbered(2));
    await clock.tick(9_999);
    assert.deepEqual(app.got, [1]);
    await clock.tick(1);
    assert.deepEqual(app.got, [1, 2]);
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: false, replayed: 1, reason: "reconnect" }]);
    assert.deepEqual(app.resyncs.at(-1), { reason: "reconnect", streams: ["notifications"] });
  });

  test("a drop during a recovery asks again from the same position", async () => {
    const { client, app } = makeClient();
    (await open(client)).deliver(numbered(1));
    const ws = await reconnect(client);
    ws.deliver(numbered(2)); // held, then lost with the socket
    const again = await reconnect(client);
    assert.deepEqual(recoverFrames(again)[0].recover, { notifications: { epoch: "e1", seq: 1 } });
    again.deliver(numbered(2));
    again.deliver(recoveredReply({ notifications: true }));
    assert.deepEqual(app.got, [1, 2]);
    await clock.tick(20_000); // the first recovery's wait went with its socket: no late failure
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: true, replayed: 1, reason: "reconnect" }]);
  });
});

describe("while connected", () => {
  test("a skipped seq holds the stream and recovers what is missing", async () => {
    const { client, app } = makeClient();
    const ws = await open(client);
    ws.deliver(numbered(1));
    ws.deliver(numbered(2));
    ws.deliver(numbered(5));
    assert.deepEqual(recoverFrames(ws), [
      { action: "subscribe", streams: ["notifications"], recover: { notifications: { epoch: "e1", seq: 2 } } },
    ]);
    ws.deliver(numbered(6)); // live while recovering: held too
    assert.deepEqual(app.got, [1, 2]);
    for (const seq of [3, 4, 5]) ws.deliver(numbered(seq));
    ws.deliver(recoveredReply({ notifications: true }));

    assert.deepEqual(app.got, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: true, replayed: 4, reason: "gap" }]);
    assert.equal(app.resyncs.length, 1); // the first connect's only
  });

  test("an older or repeated seq is dropped", async () => {
    const { client, app } = makeClient();
    const ws = await open(client);
    for (const seq of [1, 2, 2, 1, 3]) ws.deliver(numbered(seq));
    assert.deepEqual(app.got, [1, 2, 3]);
  });

  test("the edge's resync recovers instead of asking the app to refetch", async () => {
    const { client, app } = makeClient();
    const ws = await open(client);
    ws.deliver(numbered(1));
    ws.deliver({ stream: "system", event: "resync", data: { streams: ["notifications"] } });
    assert.deepEqual(recoverFrames(ws)[0].recover, { notifications: { epoch: "e1", seq: 1 } });
    ws.deliver(numbered(2));
    ws.deliver(recoveredReply({ notifications: true }));
    assert.deepEqual(app.got, [1, 2]);
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: true, replayed: 1, reason: "event" }]);
    assert.deepEqual(app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);
  });

  test("a new epoch resets the position and asks the app to refetch", async () => {
    const { client, app } = makeClient();
    const ws = await open(client);
    ws.deliver(numbered(7));
    ws.deliver(numbered(3, "e2"));
    ws.deliver(numbered(3, "e2"));
    ws.deliver(numbered(4, "e2"));
    assert.deepEqual(app.got, [7, 3, 4]);
    assert.deepEqual(app.resyncs.at(-1), { reason: "epoch", streams: ["notifications"] });
    assert.equal(recoverFrames(ws).length, 0);
    const again = await reconnect(client);
    assert.deepEqual(recoverFrames(again)[0].recover, { notifications: { epoch: "e2", seq: 4 } });
  });

  test("broadcasts of a recovering stream are not held: they carry no position", async () => {
    const { client, app } = makeClient();
    const ws = await open(client);
    ws.deliver(numbered(1));
    ws.deliver(numbered(3));
    ws.deliver({ stream: "notifications", event: "maintenance" });
    assert.deepEqual(app.got, [1, "maintenance"]);
  });

  test("more held frames than recoveryBuffer fail the recovery instead of growing", async () => {
    const { client, app } = makeClient({ recoveryBuffer: 2 });
    const ws = await open(client);
    ws.deliver(numbered(1));
    for (const seq of [4, 2, 3]) ws.deliver(numbered(seq));
    ws.deliver(recoveredReply({ notifications: true }));
    assert.deepEqual(app.recoveries, [{ stream: "notifications", recovered: false, replayed: 0, reason: "gap" }]);
    assert.deepEqual(app.resyncs.at(-1), { reason: "gap", streams: ["notifications"] });
    ws.deliver(numbered(5));
    assert.deepEqual(app.got, [1, 5]);
  });

  test("an unsubscribed stream's position is forgotten", async () => {
    const { client, app } = makeClient({ streams: ["notifications", "chat"] });
    const ws = await open(client);
    ws.deliver(numbered(1, "e1", "chat"));
    client.unsubscribe("chat");
    ws.deliver({ stream: "system", event: "unsubscribed", data: { streams: ["notifications"] } });
    client.subscribe("chat");
    ws.deliver({ stream: "system", event: "subscribed", data: { streams: ["notifications", "chat"] } });
    ws.deliver(numbered(9, "e1", "chat"));
    assert.equal(recoverFrames(ws).length, 0, "9 is a fresh start, not a gap after 1");
    assert.equal(app.resyncs.length, 1);
  });
});

describe("across a page reload (resume)", () => {
  test("a new page recovers from the positions the last one kept, without a refetch", async () => {
    const storage = new FakeStorage();
    const before = makeClient({ resume: true, storage });
    const ws = await open(before.client);
    for (const seq of [1, 2, 3]) ws.deliver(numbered(seq));
    assert.deepEqual(before.app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);
    before.client.close(); // the page goes away

    const after = makeClient({ resume: true, storage });
    const next = await open(after.client);
    assert.deepEqual(recoverFrames(next)[0].recover, { notifications: { epoch: "e1", seq: 3 } });
    next.deliver(numbered(4));
    next.deliver(recoveredReply({ notifications: true }));
    assert.deepEqual(after.app.got, [4]);
    assert.deepEqual(after.app.recoveries, [{ stream: "notifications", recovered: true, replayed: 1, reason: "resume" }]);
    assert.deepEqual(after.app.resyncs, []);
  });

  test("a failed resume is a first connect: the app loads", async () => {
    const storage = new FakeStorage();
    const before = makeClient({ resume: true, storage });
    (await open(before.client)).deliver(numbered(3));
    before.client.close();
    const after = makeClient({ resume: true, storage });
    (await open(after.client)).deliver(recoveredReply({ notifications: false }));
    assert.deepEqual(after.app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);
  });

  test("positions of another user or another edge are not used", async () => {
    const storage = new FakeStorage();
    const alice = makeClient({ resume: true, storage });
    (await open(alice.client)).deliver(numbered(5));
    alice.client.close();

    const bob = makeClient({ resume: true, storage });
    assert.equal(recoverFrames(await open(bob.client, { user: "bob" })).length, 0);
    assert.deepEqual(bob.app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);
    const elsewhere = makeClient({ resume: true, storage, url: "ws://other-edge.test/ws" });
    assert.equal(recoverFrames(await open(elsewhere.client)).length, 0);
  });

  test("a new user on the same client does not inherit the last user's positions", async () => {
    const { client, app } = makeClient();
    (await open(client)).deliver(numbered(5));
    const ws = await reconnect(client, { user: "bob" });
    assert.equal(recoverFrames(ws).length, 0);
    assert.deepEqual(app.resyncs.at(-1), { reason: "connect", streams: ["notifications"] });
  });

  test("the storage stays bounded however many users and edges a tab sees", async () => {
    const storage = new FakeStorage();
    for (let i = 0; i < 20; i++) {
      const { client } = makeClient({ resume: true, storage });
      (await open(client, { user: `user-${i}` })).deliver(numbered(1));
      client.close();
    }
    assert.equal(storage.items.size, 9); // the index and 8 entries
    assert.equal(JSON.parse(storage.getItem("realtime.positions"))[0].endsWith("|user-19"), true);
  });

  test("storage that throws or holds garbage only costs the resume", async () => {
    const storage = new FakeStorage();
    storage.broken = true;
    const { client, app } = makeClient({ resume: true, storage });
    const ws = await open(client);
    ws.deliver(numbered(1));
    assert.deepEqual(app.got, [1]);
    const again = await reconnect(client); // positions in memory still work
    assert.deepEqual(recoverFrames(again)[0].recover, { notifications: { epoch: "e1", seq: 1 } });

    const garbage = new FakeStorage();
    garbage.setItem("realtime.positions", "{nope");
    garbage.setItem("realtime.positions:ws://edge.test/ws|alice", '{"notifications":["e1","x"]}');
    const fresh = makeClient({ resume: true, storage: garbage });
    assert.equal(recoverFrames(await open(fresh.client)).length, 0);
    assert.deepEqual(fresh.app.resyncs, [{ reason: "connect", streams: ["notifications"] }]);
  });

  test("without resume nothing is stored", async () => {
    const storage = new FakeStorage();
    const { client } = makeClient({ storage });
    (await open(client)).deliver(numbered(1));
    assert.equal(storage.items.size, 0);
  });
});
