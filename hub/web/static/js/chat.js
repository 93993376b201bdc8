// The chat: start a workstream on a chosen spoke (or any) with a chosen model, follow its
// reply as it streams, answer approvals, cancel or close it, and switch between workstreams
// (the list on the left) — an old one reopens with its whole transcript and can go on.
//
// Each workstream opened here keeps its own pane and cursor. Only the pane shown streams
// (browsers allow six connections to a host; a chat with many tabs open would starve the
// page); switching back resumes from the pane's last seq, so nothing is missed or drawn
// twice.

import {allows, api, enc, get} from "./api.js";
import {badge, h, renderRows, say, timeCell, $} from "./dom.js";
import {followWorkstream} from "./live.js";
import {start} from "./page.js";
import {Transcript} from "./transcript.js";

let role = "viewer";
let active = null;  // the id shown, or null for "new chat"
const panes = new Map();  // id → {el, view, follower}
let hubModels = [];
let spokes = [];

function pane(id) {
  let p = panes.get(id);
  if (!p) {
    const el = h("div", {class: "pane log-view", data: {ws: id}});
    $("#panes").append(el);
    const view = new Transcript(el, id, {canAct: allows(role, "operator"), onChange: (t) => {
      if (t.kind !== "state") return;
      if (active === id) showState(t.state);
      const item = document.querySelector(`#ws-list li[data-ws="${CSS.escape(id)}"] .badge`);
      if (item) { item.textContent = t.state; item.className = `badge state-${t.state}`; }
    }});
    p = {el, view, follower: null};
    panes.set(id, p);
  }
  return p;
}

function showState(state) {
  const el = $("#conv-state");
  el.hidden = !state;
  el.textContent = state;
  el.className = `badge state-${state}`;
  const open = state && state !== "closed";
  $("#cancel").disabled = !open;
  $("#close").disabled = !open;
}

/** Show workstream `id` (null: the new-chat view). */
async function show(id) {
  if (active && panes.has(active)) {
    const old = panes.get(active);
    old.follower?.stop();
    old.follower = null;
    old.el.hidden = true;
  }
  active = id;
  $("#intro").hidden = Boolean(id);
  for (const li of document.querySelectorAll("#ws-list li")) li.classList.toggle("active", li.dataset.ws === id);
  if (!id) {
    $("#conv-title").textContent = "New chat";
    $("#conv-meta").textContent = "";
    $("#conv-live").textContent = "";
    showState("");
    if (location.hash) history.replaceState(null, "", "/chat");
    return;
  }
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  const p = pane(id);
  p.el.hidden = false;
  p.follower = followWorkstream(id, {after: p.view.last, onEvent: (e) => p.view.apply(e),
    onStatus: (s) => { if (active === id) $("#conv-live").textContent = s; }});
  $("#conv-title").textContent = id;
  try {
    const w = await get(`/api/ws/${enc(id)}`);
    if (active !== id) return;
    $("#conv-title").textContent = w.title || id;
    $("#conv-title").title = id;
    $("#conv-meta").textContent = `${id} · spoke ${w.spoke || w.want_spoke || "any"} · model ${w.model || "default"}`;
    showState(w.state);
  } catch (err) {
    say($("#composer .msg"), err.message, "error");
  }
}

// ------------------------------------------------------------------ the list
async function refreshList() {
  const rows = (await get("/api/ws")).slice(0, 100);
  renderRows($("#ws-list"), rows, (w) => h("li", {data: {ws: w.id}, class: w.id === active ? "active" : "",
    on: {click: () => show(w.id)}},
    h("div", {class: "ws-title", text: w.title || w.id}),
    h("div", {class: "ws-sub"}, badge(w.state), " ", w.spoke || w.want_spoke || "any", " · ", timeCell(w.updated_at || w.created_at))),
  "none yet");
}

// ------------------------------------------------------------------ models and spokes
function fillModels() {
  const select = $("#new-chat select[name=model]");
  const spoke = $("#new-chat select[name=spoke]").value;
  const current = select.value;
  const names = new Set(hubModels.map((m) => m.alias));
  for (const s of spokes) {
    if (!spoke || s.name === spoke) for (const m of s.models || []) names.add(m);
  }
  const options = [h("option", {value: "", text: "the hub's default"})];
  for (const name of [...names].sort()) options.push(h("option", {value: name, text: name, selected: name === current}));
  select.replaceChildren(...options);
}

async function loadChoices() {
  const [models, spokeList] = await Promise.allSettled([get("/api/models"), get("/api/spokes")]);
  if (models.status === "fulfilled") {
    hubModels = models.value.models || [];
    const def = models.value.default;
    $("#new-chat select[name=model]").dataset.default = def || "";
  }
  if (spokeList.status === "fulfilled") spokes = spokeList.value.filter((s) => !s.revoked);
  const select = $("#new-chat select[name=spoke]");
  const current = select.value;
  select.replaceChildren(h("option", {value: "", text: "any spoke"}),
    ...spokes.map((s) => h("option", {value: s.name, selected: s.name === current,
      text: `${s.name}${s.connected ? "" : " (offline)"}`})));
  fillModels();
}

// ------------------------------------------------------------------ sending
async function send(ev) {
  ev.preventDefault();
  const form = $("#composer");
  const text = form.message.value;
  if (!text.trim()) return;
  const button = $("#send");
  button.disabled = true;
  say(form.querySelector(".msg"), "");
  try {
    if (active) {
      await api("POST", `/api/ws/${enc(active)}/messages`, {message: text});
    } else {
      const choice = new FormData($("#new-chat"));
      const body = {message: text, auto_approve: choice.get("auto_approve") === "on"};
      if (choice.get("spoke")) body.spoke = choice.get("spoke");
      if (choice.get("model")) body.model = choice.get("model");
      const row = await api("POST", "/api/ws", body);
      await show(row.id);
      refreshList().catch(() => {});
    }
    form.message.value = "";
  } catch (err) {
    say(form.querySelector(".msg"), err.message, "error");
  } finally {
    button.disabled = false;
    form.message.focus();
  }
}

function wire() {
  $("#composer").addEventListener("submit", send);
  $("#composer textarea").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#new").addEventListener("click", () => { show(null); $("#composer textarea").focus(); });
  $("#new-chat select[name=spoke]").addEventListener("change", () => { if (active) show(null); fillModels(); });
  $("#new-chat select[name=model]").addEventListener("change", () => { if (active) show(null); });
  $("#cancel").addEventListener("click", () => act("cancel"));
  $("#close").addEventListener("click", () => {
    if (confirm("Close this workstream? Its box is destroyed; the transcript stays.")) act("close");
  });
  window.addEventListener("hashchange", () => {
    const id = location.hash.slice(1);
    if (id.startsWith("ws_") && id !== active) show(id);
  });
}

async function act(what) {
  if (!active) return;
  try {
    await api("POST", `/api/ws/${enc(active)}/${what}`);
    refreshList().catch(() => {});
  } catch (err) {
    say($("#composer .msg"), err.message, "error");
  }
}

start(async (session) => {
  role = session.role;
  wire();
  await Promise.all([loadChoices(), refreshList()]);
  setInterval(() => { refreshList().catch(() => {}); }, 4000);
  setInterval(() => { loadChoices().catch(() => {}); }, 15000);
  const id = location.hash.slice(1);
  await show(id.startsWith("ws_") ? id : null);
});
