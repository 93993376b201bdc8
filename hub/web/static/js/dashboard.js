// The dashboard: spokes, workstreams, boxes, the events timeline and (for admins) tokens,
// keys and users, on one page kept live. Every event on the hub's timeline triggers a
// refresh of the lists (debounced), and a timer refreshes them every few seconds anyway, so a
// spoke coming online or going away shows without a reload even when the event stream is
// down.

import {allows, enc, get, api} from "./api.js";
import {badge, busy, h, renderRows, say, timeCell, $} from "./dom.js";
import {followEvents, followWorkstream} from "./live.js";
import {start} from "./page.js";
import {Transcript} from "./transcript.js";
import {openDetail, wireDetail} from "./detail.js";
import {openBox, refreshBoxes, wireBoxes} from "./boxes.js";
import {refreshAdmin, wireAdmin} from "./admin.js";

let role = "viewer";
const REFRESH_MS = 5000;

/** A spoke's state: the API's `state` where given, else derived from the older fields. */
export function spokeState(s) {
  if (s.state) return s.state;
  if (s.revoked) return "revoked";
  if (s.connected) return "connected";
  return /left|goodbye|shut ?down/i.test(s.disconnect_reason || "") ? "left" : "lost";
}

/** Per-verb latency as the API gives it ({verb: {count, errors, p50_ms, p95_ms}}): the
 * three busiest verbs as "verb p50 / p95 ms", every verb in the tooltip. */
function latencyCell(latency) {
  const rows = Object.entries(latency || {}).filter(([, v]) => v && typeof v === "object")
    .sort((a, b) => (b[1].count || 0) - (a[1].count || 0));
  const text = ([verb, v]) => `${verb} ${fmtMs(v.p50_ms)} / ${fmtMs(v.p95_ms)} ms` +
    (v.errors ? ` (${v.errors} failed)` : "");
  const cell = h("td", {class: "small latency", title: rows.length
    ? `p50 / p95 of the last 5 min, by verb:\n${rows.map(text).join("\n")}` : ""});
  if (!rows.length) cell.textContent = "—";
  for (const row of rows.slice(0, 3)) cell.append(h("div", {text: text(row)}));
  return cell;
}

const fmtMs = (v) => (v === undefined || v === null ? "?" : Number(v) >= 100 ? Math.round(v) : Number(v).toFixed(1));

// ------------------------------------------------------------------ spokes
let spokeNames = [];

async function refreshSpokes() {
  const spokes = await get("/api/spokes");
  spokeNames = spokes.filter((s) => spokeState(s) !== "revoked").map((s) => s.name);
  $("#spokes-count").textContent = `${spokes.filter((s) => s.connected).length} of ${spokes.length} connected`;
  // What a row shows: how long a connected spoke has been silent changes at every fetch and
  // matters only once it is stale (a row redrawn every 5 s loses the pointer under it).
  const rows = spokes.map(({silent_s: silent, last_heartbeat_at: _beat, ...rest}) =>
    (spokeState(rest) === "stale" ? {...rest, silent} : rest));
  renderRows($("#spokes tbody"), rows, (s) => {
    const state = spokeState(s);
    const why = state === "stale" ? `silent for ${Math.round(s.silent ?? 0)} s`
      : state !== "connected" ? s.disconnect_reason : "";
    const revoke = allows(role, "admin") && state !== "revoked"
      ? h("button", {type: "button", class: "danger small", text: "Revoke", on: {click: (ev) => revokeSpoke(s.name, ev.target)}})
      : null;
    return h("tr", {data: {spoke: s.name, state}},
      h("td", {class: "name", text: s.name}),
      h("td", {}, badge(state), why ? h("div", {class: "muted small", text: why}) : null),
      h("td", {}, timeCell(s.last_seen)),
      h("td", {text: s.version || "—"}),
      h("td", {text: (s.labels || []).join(", ") || "—"}),
      h("td", {text: (s.models || []).join(", ") || "—"}),
      h("td", {class: "load", text: s.connected ? `${s.workstreams ?? 0}/${s.max_workstreams ?? 0} busy` : "—"}),
      h("td", {text: String(s.boxes ?? 0)}),
      h("td", {text: String(s.running_calls ?? 0)}),
      latencyCell(s.latency),
      h("td", {}, revoke));
  }, "no spokes yet: create a join token below");
  fillSpokeSelect();
}

function fillSpokeSelect() {
  const select = $("#box-new select[name=spoke]");
  const want = spokeNames.join("\n");
  if (!select || select.dataset.names === want) return;
  const current = select.value;
  select.dataset.names = want;
  select.replaceChildren(...spokeNames.map((n) => h("option", {value: n, text: n, selected: n === current})));
}

async function revokeSpoke(name, button) {
  if (!confirm(`Revoke spoke ${name}? It is disconnected at once and cannot reconnect.`)) return;
  await busy(button, $("#spokes-msg"), async () => {
    await api("DELETE", `/api/spokes/${enc(name)}`);
    refreshSoon();
  });
}

// ------------------------------------------------------------------ workstreams
async function refreshWorkstreams() {
  const rows = (await get("/api/ws")).slice(0, 100);
  const open = rows.filter((w) => w.state !== "closed").length;
  $("#ws-count").textContent = `${open} open`;
  const view = rows.map((w) => ({...w, pending: w.pending_count || 0}));
  renderRows($("#workstreams tbody"), view, (w) => h("tr", {data: {ws: w.id, state: w.state}},
    h("td", {}, h("a", {href: `#${w.id}`, class: "mono", text: w.id, on: {click: (ev) => { ev.preventDefault(); openWorkstream(w.id); }}})),
    h("td", {class: "title", text: w.title || "—"}),
    h("td", {}, badge(w.state)),
    h("td", {text: w.spoke || w.want_spoke || (w.want_label ? `label ${w.want_label}` : "any")}),
    h("td", {text: w.model || "default"}),
    h("td", {}, timeCell(w.created_at, "age")),
    h("td", {text: `${(w.input_tokens || 0) + (w.output_tokens || 0)}`}),
    h("td", {text: w.pending ? `${w.pending} waiting` : "—", class: w.pending ? "warn" : ""}),
    h("td", {class: "small", text: w.waiting || ""})), "no workstreams yet");
}

function openWorkstream(id) {
  openDetail(`Workstream ${id}`, id, (body) => {
    const state = badge("…", "unknown");
    const meta = h("span", {class: "muted"});
    const status = h("span", {class: "muted small"});
    const log = h("div", {class: "log-view"});
    body.append(h("div", {class: "row"}, state, meta, h("a", {href: `/chat#${id}`, text: "continue in the chat →"}), status), log);
    const showState = (s) => { state.textContent = s; state.className = `badge state-${s}`; };
    get(`/api/ws/${enc(id)}`).then((w) => {
      showState(w.state);
      meta.textContent = `spoke ${w.spoke || "—"} · model ${w.model || "default"} · ${w.title || ""}`;
    }).catch((err) => { meta.textContent = err.message; });
    const view = new Transcript(log, id, {canAct: allows(role, "operator"),
      onChange: (t) => { if (t.kind === "state") showState(t.state); }});
    const follower = followWorkstream(id, {after: 0, onEvent: (e) => view.apply(e),
      onStatus: (s) => { status.textContent = s; }});
    return () => follower.stop();
  });
}

// ------------------------------------------------------------------ events timeline
// A result other than ok/exit 0 that reads as a failure: an error code, a cancel, a denial.
const failed = (result) => /^(not_found|invalid|denied|busy|timeout|unavailable|internal|cancelled|timed out)/.test(result);

function showEvent(e) {
  const list = $("#timeline");
  const item = h("li", {class: `ev kind-${String(e.kind).replace(/[^a-z0-9_-]/gi, "-")}`, data: {id: e.id}},
    h("span", {class: "ts", text: new Date(e.ts * 1000).toLocaleTimeString()}),
    h("span", {class: "kind", text: e.kind}),
    h("span", {class: "subject", text: e.subject || ""}),
    e.detail ? h("span", {class: "detail", text: typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)}) : null,
    e.spoke && e.spoke !== e.subject ? h("span", {class: "spoke", text: `on ${e.spoke}`}) : null,
    e.result && e.result !== "ok" ? h("span", {class: `result ${failed(e.result) ? "failed" : ""}`, text: e.result}) : null,
    e.actor ? h("span", {class: "actor", text: `by ${e.actor}`}) : null);
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

async function startTimeline() {
  let after = 0;
  try {
    // The newest page first, to start from; older history is on the events API.
    const page = await get("/api/events?limit=100");
    const events = page.events || [];
    for (const e of events) showEvent(e);  // oldest first: each goes on top
    after = page.last ?? (events.length ? events[events.length - 1].id : 0);
  } catch (err) {
    say($("#events-msg"), err.status === 404 ? "The events timeline is not available on this hub." : err.message,
      err.status === 404 ? "info" : "error");
    if (err.status === 404 || err.status === 403) { setMode("polling lists"); return; }
  }
  followEvents({after, onEvent: (e) => { showEvent(e); refreshSoon(); }, onMode: setMode});
}

function setMode(mode) {
  $("#events-mode").textContent = mode;
  $("#live").textContent = mode === "live" ? "● live" : `○ ${mode}`;
  $("#live").className = `live ${mode === "live" ? "on" : "off"}`;
}

// ------------------------------------------------------------------ refreshing
let timer = null;
let running = false;
let again = false;

async function refreshAll() {
  if (running) { again = true; return; }
  running = true;
  try {
    const jobs = [
      [refreshSpokes, "#spokes-msg"], [refreshWorkstreams, "#ws-msg"], [refreshBoxes, "#boxes-msg"],
    ];
    await Promise.all([
      ...jobs.map(async ([fn, out]) => {
        try { await fn(); say($(out), ""); } catch (err) { say($(out), err.message, "error"); }
      }),
      allows(role, "admin") ? refreshAdmin().catch(() => {}) : null,
    ]);
  } finally {
    running = false;
    if (again) { again = false; refreshSoon(); }
  }
}

/** Refresh shortly (events come in bursts: one refresh for a burst). */
export function refreshSoon() {
  clearTimeout(timer);
  timer = setTimeout(() => { refreshAll(); }, 250);
}

start(async (session) => {
  role = session.role;
  wireDetail();
  wireBoxes(role, refreshSoon);
  if (allows(role, "admin")) wireAdmin(refreshSoon);
  await refreshAll();
  setInterval(refreshAll, REFRESH_MS);
  startTimeline();
  const hash = location.hash.slice(1);
  if (hash.startsWith("ws_")) openWorkstream(hash);
  else if (hash.startsWith("bx_")) openBox(hash);
});
