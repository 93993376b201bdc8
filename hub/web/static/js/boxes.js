// Boxes on the dashboard: the list (with CPU and memory from each box's stats), a form to
// make one, and a box's panel: its logs, live stats, and a command box whose output streams
// in as the command prints (`POST /api/boxes/{id}/exec`, NDJSON read with fetch +
// ReadableStream) and ends with the exit code.

import {allows, api, enc, get, ndjson, request} from "./api.js";
import {badge, busy, bytes, h, renderRows, say, timeCell, $} from "./dom.js";
import {openDetail} from "./detail.js";

let role = "viewer";
let refresh = () => {};
const stats = new Map();  // box id → {cpu_percent, memory_bytes, pids} | {error}
let boxes = [];
let statsAt = 0;

function statText(id, field) {
  const s = stats.get(id);
  if (!s) return "…";  // not asked yet, or on its way
  if (s.error) return "—";
  return field === "cpu" ? `${Number(s.cpu_percent ?? 0).toFixed(1)} %` : bytes(s.memory_bytes);
}

export async function refreshBoxes() {
  boxes = await get("/api/boxes");
  $("#boxes-count").textContent = `${boxes.length} live`;
  renderRows($("#boxes tbody"), boxes, (b) => h("tr", {data: {box: b.id, state: b.state}},
    h("td", {}, h("a", {href: `#${b.id}`, class: "mono", text: b.id, on: {click: (ev) => { ev.preventDefault(); openBox(b.id); }}})),
    h("td", {text: b.spoke}),
    h("td", {text: b.image}),
    h("td", {}, badge(b.state)),
    h("td", {}, timeCell(b.created_at, "age")),
    h("td", {data: {cpu: b.id}, text: statText(b.id, "cpu")}),
    h("td", {data: {mem: b.id}, text: statText(b.id, "mem")}),
    h("td", {}, allows(role, "operator")
      ? h("button", {type: "button", class: "danger small", text: "Destroy", on: {click: (ev) => destroy(b.id, ev.target)}})
      : null)), "no live boxes");
  // In the background (each is a round trip to a spoke): every box every 10 s, a new one now.
  const running = boxes.filter((b) => b.state === "running").slice(0, 20).map((b) => b.id);
  if (Date.now() - statsAt > 10000) {
    statsAt = Date.now();
    refreshStats(running);
  } else {
    const fresh = running.filter((id) => !stats.has(id));
    if (fresh.length) refreshStats(fresh);
  }
}

async function refreshStats(ids) {
  const queue = [...ids];
  for (const id of queue) if (!stats.has(id)) stats.set(id, null);  // asked: not "new" again
  const worker = async () => {
    for (let id = queue.shift(); id; id = queue.shift()) {
      try { stats.set(id, await get(`/api/boxes/${enc(id)}/stats`)); } catch (err) { stats.set(id, {error: err.message}); }
      const cpu = document.querySelector(`[data-cpu="${CSS.escape(id)}"]`);
      const mem = document.querySelector(`[data-mem="${CSS.escape(id)}"]`);
      if (cpu) cpu.textContent = statText(id, "cpu");
      if (mem) mem.textContent = statText(id, "mem");
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

async function destroy(id, button) {
  if (!confirm(`Destroy box ${id}? Its files are lost.`)) return;
  await busy(button, $("#boxes-msg"), async () => {
    await api("DELETE", `/api/boxes/${enc(id)}`);
    refresh();
  });
}

export function wireBoxes(currentRole, refreshSoon) {
  role = currentRole;
  refresh = refreshSoon;
  const form = $("#box-new");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    await busy(form.querySelector("button"), form.querySelector(".msg"), async () => {
      const box = await api("POST", "/api/boxes", {spoke: data.get("spoke"), image: data.get("image")});
      refresh();
      openBox(box.id);
    });
  });
}

// ------------------------------------------------------------------ one box
function decodeBase64(text) {
  const raw = atob(text || "");
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

export function openBox(id) {
  openDetail(`Box ${id}`, id, (body) => {
    const info = h("p", {class: "muted"});
    const statsLine = h("p", {class: "stats", attrs: {"aria-label": "live stats"}, text: "stats: …"});
    const logs = h("pre", {class: "logs", text: "…"});
    const logsButton = h("button", {type: "button", class: "small", text: "Reload logs"});
    body.append(info, statsLine, h("div", {class: "row"}, h("h3", {text: "Logs"}), logsButton), logs);

    get("/api/boxes").then((all) => {
      const b = all.find((x) => x.id === id);
      info.textContent = b ? `${b.image} on ${b.spoke} · ${b.state}` : "not a live box";
    }).catch((err) => { info.textContent = err.message; });

    const loadLogs = async () => {
      try {
        const res = await request("GET", `/api/boxes/${enc(id)}/logs?tail=200`);
        logs.textContent = new TextDecoder().decode(await res.arrayBuffer()) || "(no output yet)";
      } catch (err) {
        logs.textContent = err.message;
      }
    };
    logsButton.addEventListener("click", loadLogs);
    loadLogs();

    let stopped = false;
    const loadStats = async () => {
      if (stopped) return;
      try {
        const s = await get(`/api/boxes/${enc(id)}/stats`);
        statsLine.textContent = `CPU ${Number(s.cpu_percent ?? 0).toFixed(1)} % · memory ${bytes(s.memory_bytes)} · ${s.pids ?? "?"} processes`;
      } catch (err) {
        statsLine.textContent = `stats: ${err.message}`;
      }
      if (!stopped) statsTimer = setTimeout(loadStats, 3000);
    };
    let statsTimer = setTimeout(loadStats, 0);

    let running = null;
    if (allows(role, "operator")) body.append(commandBox(id, (ctl) => { running = ctl; }));
    return () => {
      stopped = true;
      clearTimeout(statsTimer);
      running?.abort();
    };
  });
}

function commandBox(id, track) {
  const input = h("input", {name: "cmd", class: "cmd", placeholder: "a command, run with sh -c",
    attrs: {"aria-label": "command", autocomplete: "off"}});
  const run = h("button", {type: "submit", text: "Run"});
  const stop = h("button", {type: "button", text: "Stop", disabled: true});
  const out = h("pre", {class: "exec-output", attrs: {"aria-label": "command output"}});
  const exit = h("p", {class: "exit", attrs: {role: "status"}});
  const msg = h("span", {class: "msg", hidden: true, attrs: {role: "alert"}});
  const form = h("form", {class: "exec"}, h("h3", {text: "Run a command"}),
    h("div", {class: "copyline"}, input, run, stop), msg, out, exit);
  let controller = null;
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!input.value.trim() || controller) return;
    controller = new AbortController();
    track(controller);
    out.replaceChildren();
    exit.textContent = "running…";
    exit.className = "exit";
    say(msg, "");
    run.disabled = true;
    stop.disabled = false;
    const decoders = {stdout: new TextDecoder(), stderr: new TextDecoder()};
    try {
      const res = await request("POST", `/api/boxes/${enc(id)}/exec`, {cmd: ["sh", "-c", input.value], timeout_s: 600},
        {signal: controller.signal});
      for await (const line of ndjson(res)) {
        if (line.t === "stdout" || line.t === "stderr") {
          const text = decoders[line.t].decode(decodeBase64(line.d), {stream: true});
          if (text) out.append(h("span", {class: line.t, text}));
          out.scrollTop = out.scrollHeight;
        } else if (line.t === "exit") {
          const extra = line.timed_out ? " (timed out)" : line.cancelled ? " (cancelled)" : "";
          exit.textContent = `exit code ${line.exit_code}${extra}`;
          exit.className = `exit ${line.exit_code === 0 ? "ok" : "bad"}`;
        } else if (line.t === "error") {
          exit.textContent = `failed: ${line.message} (${line.code})`;
          exit.className = "exit bad";
        }
      }
    } catch (err) {
      if (err.name === "AbortError") { exit.textContent = "stopped"; exit.className = "exit bad"; }
      else { exit.textContent = ""; say(msg, err.message, "error"); }
    } finally {
      controller = null;
      run.disabled = false;
      stop.disabled = true;
    }
  });
  return form;
}
