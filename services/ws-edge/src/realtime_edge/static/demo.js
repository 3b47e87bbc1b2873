// The notification centre demo: realtime.js for live events, the REST API for state.
//
// The list and the unread count come from REST; events keep them current, applied by
// notification id so an event seen twice (a REST answer and its event) changes nothing.
// After a reconnect realtime.js recovers the events the page missed; only when it cannot
// (`onResync`) does the page refetch both. The view is kept in sessionStorage with the
// client's positions (`resume`), so a reload recovers too instead of refetching.
//
// The chat card publishes on the interactive `chat` stream (`client.publish`) to the
// example chat backend, which answers with `message.created` to both users' chat keys.
import { RealtimeClient } from "/static/realtime.js";

const PAGE_SIZE = 50;
/** Notifications kept across a reload: the loaded page plus what arrived since. */
const VIEW_ITEMS = 100;
const SEVERITY_ICON = { info: "i", success: "✓", warning: "!", error: "×" };
const $ = (selector) => document.querySelector(selector);

const ui = {
  status: $("[data-testid=connection-status]"),
  statusText: $("[data-testid=connection-status] .status-text"),
  bell: $("[data-testid=bell]"),
  badge: $("[data-testid=unread-count]"),
  panel: $("[data-testid=panel]"),
  list: $("[data-testid=notification-list]"),
  empty: $("[data-testid=empty]"),
  markAll: $("[data-testid=mark-all-read]"),
  tabs: document.querySelectorAll(".tab"),
  picker: $("[data-testid=user-picker]"),
  select: $("#user-select"),
  userName: $("[data-testid=user-name]"),
  avatar: $("[data-testid=avatar]"),
  notice: $("[data-testid=notice]"),
  composer: $("[data-testid=composer]"),
  composerForm: $("#composer-form"),
  composerStatus: $("[data-testid=composer-status]"),
  log: $("[data-testid=event-log]"),
  sync: $("[data-testid=sync-status]"),
  chat: $("[data-testid=chat]"),
  chatLog: $("[data-testid=chat-log]"),
  chatForm: $("#chat-form"),
  chatStatus: $("[data-testid=chat-status]"),
};

const state = {
  apiBase: "",
  devMode: false,
  user: null,
  token: null,
  tokenExp: 0,
  staticToken: null,
  client: null,
  items: new Map(), // id -> notification
  unread: 0,
  filter: "all",
  fresh: new Set(),
  loadSeq: 0,
  loaded: false, // the view has a base (loaded, or kept from the last page) that events apply to
  loads: 0, // full refetches, shown for tests: a recovery that worked costs none
  chatAllowed: true, // the token may hold and publish on `chat`
  chat: new Map(), // message id -> message.created data
};

// ---- tokens -------------------------------------------------------------------------------

const TOKEN_KEY = "realtime-demo-token";

async function devToken(user, permissions = []) {
  const query = new URLSearchParams({ user });
  if (permissions.length) query.set("permissions", permissions.join(","));
  const response = await fetch(`/dev/token?${query}`);
  if (!response.ok) throw new Error(`/dev/token answered ${response.status}`);
  return response.json();
}

/** The token provider for realtime.js and the REST calls: cached until a minute before exp. */
async function userToken({ forceRefresh = false } = {}) {
  if (state.staticToken) return state.staticToken;
  const now = Date.now() / 1000;
  if (!forceRefresh && state.token && state.tokenExp - now > 60) return state.token;
  const { token, exp } = await devToken(state.user);
  state.token = token;
  state.tokenExp = exp;
  return token;
}

// ---- REST ---------------------------------------------------------------------------------

async function api(path, { method = "GET", body, token } = {}) {
  const headers = { Authorization: `Bearer ${token ?? (await userToken())}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`${state.apiBase}/api/notifications${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const message = payload?.error?.message ?? response.statusText;
    throw new Error(`${method} ${path || "/"}: ${response.status} ${message}`);
  }
  return payload;
}

async function loadAll() {
  const seq = ++state.loadSeq; // a newer load (or a user switch) makes this one's result stale
  const [list, count] = await Promise.all([api(`?limit=${PAGE_SIZE}`), api("/unread-count")]);
  if (seq !== state.loadSeq) return;
  state.items = new Map(list.map((n) => [n.id, n]));
  state.unread = count.count;
  state.loaded = true;
  state.loads += 1;
  showSync("refetched");
  render();
}

// ---- the view across a reload ---------------------------------------------------------------

const VIEW_KEY = "realtime-demo-view";

function viewKey() {
  return `${state.apiBase}|${state.user}`;
}

/** The list and count the last page of this tab showed for this user, if any. */
function restoreView() {
  try {
    const view = JSON.parse(sessionStorage.getItem(VIEW_KEY) ?? "null");
    if (view?.key !== viewKey() || !Array.isArray(view.items)) return false;
    state.items = new Map(view.items.map((n) => [n.id, n]));
    state.unread = Number(view.unread) || 0;
    return true;
  } catch {
    return false;
  }
}

function saveView() {
  if (!state.loaded) return;
  const items = [...state.items.values()].sort(newestFirst).slice(0, VIEW_ITEMS);
  try {
    sessionStorage.setItem(VIEW_KEY, JSON.stringify({ key: viewKey(), items, unread: state.unread }));
  } catch {
    forgetView(); // a view that cannot be kept must not outlive newer positions
  }
}

function forgetView() {
  try {
    sessionStorage.removeItem(VIEW_KEY);
  } catch {
    // storage refused altogether: nothing was kept either
  }
}

// ---- chat -----------------------------------------------------------------------------------

const CHAT_KEY = "realtime-demo-chat";
const CHAT_ITEMS = 100;

/** The conversation this tab showed for this user: a reload recovers only what came since. */
function restoreChat() {
  try {
    const kept = JSON.parse(sessionStorage.getItem(CHAT_KEY) ?? "null");
    const items = kept?.key === viewKey() && Array.isArray(kept.items) ? kept.items : [];
    state.chat = new Map(items.map((m) => [m.id, m]));
  } catch {
    state.chat = new Map();
  }
}

function renderChat() {
  const items = [...state.chat.values()].sort((a, b) => (a.sent_at < b.sent_at ? -1 : a.sent_at > b.sent_at ? 1 : 0));
  try {
    sessionStorage.setItem(CHAT_KEY, JSON.stringify({ key: viewKey(), items: items.slice(-CHAT_ITEMS) }));
  } catch {
    // not kept: a reload shows only what arrives from then on
  }
  ui.chatLog.replaceChildren(
    ...items.map((m) =>
      el(
        "li",
        { class: m.from === state.user ? "mine" : "", "data-testid": "chat-message", "data-id": m.id },
        el("span", { class: "chat-who" }, m.from === state.user ? `you → ${m.to}` : m.from),
        m.text,
      ),
    ),
  );
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

const CHAT_ERRORS = {
  NO_HANDLER: "No chat backend is running (make dev starts one).",
  RATE_LIMITED: "Too fast: wait a moment and send again.",
  UNAVAILABLE: "The server cannot take messages right now; try again.",
  FORBIDDEN: "Your token may not send chat messages.",
  NOT_CONNECTED: "Not connected; wait until the page is live again.",
  DISCONNECTED: "The connection dropped; it may or may not have been sent.",
  TIMEOUT: "No answer; it may or may not have been sent.",
};

ui.chatForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(ui.chatForm);
  const send = ui.chatForm.querySelector("button[type=submit]");
  send.disabled = true;
  ui.chatStatus.textContent = "Sending…";
  try {
    await state.client.publish("chat", "message.send", { to: String(form.get("to")).trim(), text: form.get("text") });
    // The backend's answer (a rejection) may overtake the edge's `published`: keep it.
    if (ui.chatStatus.textContent === "Sending…") ui.chatStatus.textContent = "";
    ui.chatForm.elements.text.value = "";
  } catch (error) {
    ui.chatStatus.textContent = CHAT_ERRORS[error.code] ?? `Failed: ${error.message}`;
  } finally {
    send.disabled = false;
  }
});

/** Refetch everything. Until it lands the view is no base: a reload meanwhile loads too. */
function refetch() {
  state.loaded = false;
  forgetView();
  loadAll().catch((error) => notice(`Could not load notifications: ${error.message}`));
}

// ---- applying changes (from REST responses and events alike, so both may arrive) ------------

/** Keep the newest version of a notification (by id); returns the one it replaced. */
function upsert(notification) {
  const previous = state.items.get(notification.id);
  if (previous && previous.updated_at > notification.updated_at) return previous; // an older version
  state.items.set(notification.id, notification);
  if (previous) state.unread += (notification.is_read ? 0 : 1) - (previous.is_read ? 0 : 1);
  return previous;
}

const handlers = {
  "notification.created": ({ notification }) => {
    if (upsert(notification)) return; // already shown (from REST, or the event came twice)
    if (!notification.is_read) state.unread += 1;
    state.fresh.add(notification.id);
    bump();
  },
  "notification.read": ({ notification }) => {
    if (!upsert(notification)) state.unread -= 1; // older than the loaded page: it was unread
  },
  "notification.updated": ({ notification }) => {
    if (!upsert(notification) && !notification.is_read) state.unread += 1;
  },
  "notification.deleted": ({ notification_id: id }) => {
    const previous = state.items.get(id);
    if (!previous) return void refreshCount();
    state.items.delete(id);
    if (!previous.is_read) state.unread -= 1;
  },
  "notification.read_all": () => {
    for (const n of state.items.values()) n.is_read = true;
    state.unread = 0;
  },
};

async function refreshCount() {
  state.unread = (await api("/unread-count")).count;
  render();
}

// ---- rendering ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

const ICONS = {
  read: "M9 16.2 4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4Z",
  unread: "M12 7a5 5 0 1 0 0 10 5 5 0 0 0 0-10Zm0 8a3 3 0 1 1 0-6 3 3 0 0 1 0 6Z",
  delete: "M6 19a2 2 0 0 0 2 2h8a2 2 0 0 0 2-2V7H6Zm13-15h-3.5l-1-1h-5l-1 1H5v2h14Z",
};

function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
function ago(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  if (Math.abs(seconds) < 45) return "just now";
  for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60]]) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return "just now";
}

function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return ["http:", "https:"].includes(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

function renderItem(n) {
  const severity = SEVERITY_ICON[n.severity] ? n.severity : "info";
  const link = n.action_url ? safeUrl(n.action_url) : null;
  const toggle = n.is_read
    ? el("button", { class: "icon-button", type: "button", title: "Mark as unread", "data-testid": "mark-unread", onclick: () => act(`/${n.id}/unread`, "POST") }, icon("unread"))
    : el("button", { class: "icon-button", type: "button", title: "Mark as read", "data-testid": "mark-read", onclick: () => act(`/${n.id}/read`, "POST") }, icon("read"));
  const item = el(
    "li",
    {
      class: `item ${n.is_read ? "read" : "unread"}${state.fresh.has(n.id) ? " fresh" : ""}`,
      "data-testid": "notification",
      "data-id": n.id,
      "data-read": String(n.is_read),
    },
    el("span", { class: `sev sev-${severity}`, "aria-hidden": "true" }, SEVERITY_ICON[severity]),
    el(
      "div",
      {},
      el("p", { class: "item-title", "data-testid": "notification-title" }, n.title || n.type),
      n.message ? el("p", { class: "item-message" }, n.message) : null,
      el(
        "div",
        { class: "item-meta" },
        el("time", { datetime: n.created_at, title: new Date(n.created_at).toLocaleString() }, ago(n.created_at)),
        link ? el("a", { href: link, target: "_blank", rel: "noopener" }, "Open →") : null,
      ),
    ),
    el(
      "div",
      { class: "item-actions" },
      toggle,
      el("button", { class: "icon-button danger", type: "button", title: "Delete", "data-testid": "delete", onclick: () => act(`/${n.id}`, "DELETE") }, icon("delete")),
    ),
  );
  return item;
}

function newestFirst(a, b) {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0;
}

function render() {
  state.unread = Math.max(0, state.unread);
  saveView();
  const items = [...state.items.values()].filter((n) => state.filter === "all" || !n.is_read).sort(newestFirst);
  ui.list.replaceChildren(...items.map(renderItem));
  state.fresh.clear();
  ui.empty.hidden = items.length > 0;
  ui.badge.hidden = state.unread === 0;
  ui.badge.textContent = state.unread > 99 ? "99+" : String(state.unread);
  ui.badge.dataset.count = String(state.unread);
  ui.markAll.disabled = state.unread === 0;
  ui.bell.setAttribute("aria-label", `Notifications, ${state.unread} unread`);
  document.title = `${state.unread ? `(${state.unread}) ` : ""}Northwind · Notifications demo`;
}

function bump() {
  ui.badge.classList.remove("bump");
  void ui.badge.offsetWidth; // restart the animation
  ui.badge.classList.add("bump");
}

const STATUS_TEXT = { open: "Live", connecting: "Reconnecting…", closed: "Offline" };
function showState(connectionState, detail = {}) {
  ui.status.dataset.state = connectionState;
  let text = STATUS_TEXT[connectionState];
  if (connectionState === "connecting" && !ui.status.dataset.everOpen) text = "Connecting…";
  if (connectionState === "connecting" && detail.delay > 1500) text = `Reconnecting in ${Math.round(detail.delay / 1000)} s…`;
  if (connectionState === "open") ui.status.dataset.everOpen = "1";
  ui.statusText.textContent = text;
}

/** How the page last caught up: "recovered" (missed events replayed) or "refetched" (REST). */
function showSync(how, replayed = 0) {
  ui.sync.dataset.sync = how;
  ui.sync.dataset.loads = String(state.loads);
  ui.sync.dataset.replayed = String(replayed);
  ui.sync.textContent = how === "recovered" ? `Caught up${replayed ? ` · ${replayed} missed` : ""}` : "";
}

function logEvent(message, note = "") {
  const time = new Date().toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const detail = note || message.data?.notification?.title || message.data?.notification_id || "";
  const system = message.stream === "system";
  ui.log.prepend(
    el(
      "li",
      {},
      el("time", {}, time),
      el(
        "span",
        {},
        el("span", { class: system ? "ev-system" : "ev-name" }, `${message.stream} · ${message.event}`),
        detail ? el("span", { class: "ev-detail" }, ` — ${detail}`) : null,
      ),
    ),
  );
  while (ui.log.children.length > 40) ui.log.lastChild.remove();
}

function notice(text) {
  ui.notice.hidden = !text;
  ui.notice.textContent = text ?? "";
}

// ---- actions ------------------------------------------------------------------------------

async function act(path, method) {
  try {
    const result = await api(path, { method });
    if (result?.id) upsert(result); // the event will say the same; applying twice is harmless
    render();
  } catch (error) {
    notice(`Could not update the notification: ${error.message}`);
  }
}

ui.markAll.addEventListener("click", async () => {
  try {
    await api("/read-all", { method: "POST" });
    handlers["notification.read_all"]();
    render();
  } catch (error) {
    notice(`Could not mark all as read: ${error.message}`);
  }
});

function setPanel(open) {
  ui.panel.hidden = !open;
  ui.bell.setAttribute("aria-expanded", String(open));
}
ui.bell.addEventListener("click", (event) => {
  event.stopPropagation();
  setPanel(ui.panel.hidden);
});
ui.panel.addEventListener("click", (event) => event.stopPropagation());
document.addEventListener("click", () => setPanel(false));
document.addEventListener("keydown", (event) => event.key === "Escape" && setPanel(false));

for (const tab of ui.tabs) {
  tab.addEventListener("click", () => {
    state.filter = tab.dataset.filter;
    for (const t of ui.tabs) {
      t.classList.toggle("active", t === tab);
      t.setAttribute("aria-selected", String(t === tab));
    }
    render();
  });
}

setInterval(() => {
  for (const time of ui.list.querySelectorAll("time")) time.textContent = ago(time.getAttribute("datetime"));
}, 30_000);

// ---- the realtime connection ----------------------------------------------------------------

function connect(user) {
  state.client?.close();
  state.user = user;
  state.token = null;
  state.items = new Map();
  state.unread = 0;
  state.loadSeq += 1;
  state.loaded = restoreView();
  ui.userName.textContent = user;
  ui.avatar.textContent = user.slice(0, 1);
  ui.composerForm.elements.user_id.value = user;
  render();
  restoreChat();
  renderChat();
  ui.chat.hidden = !state.chatAllowed;
  ui.chatForm.elements.to.value = user === "bob" ? "alice" : "bob";

  // resume: the view above came from the last page, so recover from where it was.
  const streams = state.chatAllowed ? ["notifications", "chat"] : ["notifications"];
  const client = new RealtimeClient({ path: "/ws", token: userToken, streams, resume: true });
  client.onState(showState);
  client.on("*", "*", (message) => logEvent(message));
  client.on("notifications", "*", (message) => {
    const handle = handlers[message.event];
    if (!handle || !message.data) return;
    handle(message.data);
    render();
  });
  client.on("chat", "message.created", (message) => {
    if (!message.data?.id) return;
    state.chat.set(message.data.id, message.data); // by id: a message seen twice shows once
    renderChat();
  });
  client.on("chat", "message.rejected", (message) => {
    ui.chatStatus.textContent = `Not sent: ${message.data?.reason ?? "refused"}`;
  });
  // Only when the missed events cannot be replayed: the first visit, a failed recovery.
  client.onResync(({ reason, streams: lost }) => {
    if (lost.includes("notifications")) refetch();
    // The example backend has no REST history: say so rather than show a silent gap.
    if (lost.includes("chat") && reason !== "connect" && state.chat.size) {
      ui.chatStatus.textContent = "Some messages sent while you were away may be missing.";
    }
  });
  client.onRecovery(({ stream, recovered, replayed }) => {
    if (stream !== "notifications" || !recovered) return; // onResync follows and refetches
    logEvent({ stream: "system", event: "recovered" }, `${replayed} missed`);
    showSync("recovered", replayed);
    if (!state.loaded) refetch(); // nothing kept to apply them to
  });
  client.onError((error) => console.warn("realtime:", error));
  state.client = client;
  client.connect();
}

function chooseUser(user) {
  const url = new URL(location.href);
  url.searchParams.set("user", user);
  history.replaceState(null, "", url);
  if (![...ui.select.options].some((o) => o.value === user)) {
    ui.select.insertBefore(new Option(user, user), ui.select.lastElementChild);
  }
  ui.select.value = user;
  connect(user);
}

ui.select.addEventListener("change", () => {
  if (ui.select.value !== "__other") return chooseUser(ui.select.value);
  const user = prompt("User id to sign in as:")?.trim();
  if (user) chooseUser(user);
  else ui.select.value = state.user;
});

ui.composerForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(ui.composerForm);
  const send = ui.composerForm.querySelector("button[type=submit]");
  send.disabled = true;
  ui.composerStatus.textContent = "Sending…";
  try {
    const { token } = await devToken("demo-admin", ["notification.manage"]);
    await api("", {
      method: "POST",
      token,
      body: {
        user_id: form.get("user_id"),
        type: "demo",
        title: form.get("title"),
        message: form.get("message"),
        severity: form.get("severity"),
      },
    });
    ui.composerStatus.textContent = `Sent to ${form.get("user_id")}.`;
  } catch (error) {
    ui.composerStatus.textContent = `Failed: ${error.message}`;
  } finally {
    send.disabled = false;
  }
});

async function start() {
  try {
    const config = await (await fetch("/demo/config.json")).json();
    state.apiBase = (config.notifications_url ?? "").replace(/\/$/, "");
  } catch {
    state.apiBase = "";
  }
  const fragment = new URLSearchParams(location.hash.slice(1));
  const params = new URLSearchParams(location.search);
  if (fragment.get("token")) {
    // Outside dev mode: a token handed over in the fragment, which is never sent to a
    // server. It leaves the address bar (and history, screenshots, shared links) at once;
    // this tab keeps it for reloads.
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (sessionStorage.getItem(TOKEN_KEY)) {
    state.staticToken = sessionStorage.getItem(TOKEN_KEY);
    let sub;
    try {
      const part = state.staticToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
      sub = claims.sub;
      // A token whose claims leave chat out would have the whole handshake refused.
      const allows = (list) => !Array.isArray(list) || list.includes("chat");
      state.chatAllowed = allows(claims.streams) && allows(claims.publish);
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
      showState("closed");
      return notice("The token in the address is not a JWT.");
    }
    return connect(String(sub));
  }
  const user = params.get("user") || "alice";
  try {
    await devToken(user);
  } catch {
    showState("closed");
    notice("No token: this edge is not in dev mode. Open the page as /#token=<a JWT for your user>.");
    return;
  }
  state.devMode = true;
  ui.picker.hidden = false;
  ui.composer.hidden = false;
  chooseUser(user);
}

start();
