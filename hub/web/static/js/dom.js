// Building DOM nodes without HTML strings.
//
// Why: everything the pages show (model replies, tool output, spoke names, box logs) comes
// from somewhere the hub does not control, so no page ever assigns innerHTML. Text goes in
// as text nodes; attributes are set one by one. The CSP forbids inline script and style, so
// handlers are attached here, never written into markup.

/** h("tr", {class: "x", on: {click: fn}, data: {id: 1}, attrs: {colspan: 2}}, "text", node) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (key === "attrs") for (const [k, v] of Object.entries(value)) el.setAttribute(k, String(v));
    else el[key] = value;  // DOM properties: type, value, disabled, title, href, checked…
  }
  append(el, ...children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Replace a tbody's rows, only when the data changed: a table redrawn every few seconds
 * would otherwise lose the row under the pointer and any half-typed input in it. */
const drawn = new WeakMap();
export function renderRows(tbody, rows, rowFn, emptyText = "none") {
  const signature = JSON.stringify(rows);
  if (drawn.get(tbody) === signature) return false;
  drawn.set(tbody, signature);
  clear(tbody);
  if (!rows.length) {
    if (tbody.tagName === "TBODY") {
      const cols = tbody.closest("table")?.querySelectorAll("thead th").length || 1;
      tbody.append(h("tr", {class: "empty"}, h("td", {attrs: {colspan: cols}, text: emptyText})));
    } else {
      tbody.append(h("li", {class: "empty", text: emptyText}));
    }
  }
  for (const row of rows) tbody.append(rowFn(row));
  return true;
}

// ------------------------------------------------------------------ times and sizes
export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return "—";
  if (ts - now >= 1) return `in ${age(now, ts)}`;  // a time to come (an expiry)
  const s = Math.max(0, now - ts);
  if (s < 2) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function age(ts, now = Date.now() / 1000) {
  if (!ts) return "—";
  const s = Math.max(0, now - ts);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A <time> whose text the page's ticker keeps current ("12 s ago", or an age). */
export function timeCell(ts, kind = "ago") {
  const el = h("time", {data: {ts: ts || 0, kind}});
  if (ts) el.dateTime = new Date(ts * 1000).toISOString();
  el.title = ts ? new Date(ts * 1000).toLocaleString() : "";
  el.textContent = kind === "age" ? age(ts) : ago(ts);
  return el;
}

let ticking = false;
export function startTicker() {
  if (ticking) return;
  ticking = true;
  setInterval(() => {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll("time[data-ts]")) {
      const ts = Number(el.dataset.ts);
      el.textContent = el.dataset.kind === "age" ? age(ts, now) : ago(ts, now);
    }
  }, 1000);
}

export function clock(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

// ------------------------------------------------------------------ small widgets
/** Copy text to the clipboard; falls back to selecting it where the Clipboard API is
 * missing (a hub reached over plain HTTP is not a secure context). */
export async function copyText(text, fallbackInput) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (fallbackInput) {
      fallbackInput.focus();
      fallbackInput.select();
      return document.execCommand && document.execCommand("copy");
    }
    return false;
  }
}

/** Show a message in a status element (role=status/alert in the markup). */
export function say(el, text, kind = "info") {
  if (!el) return;
  el.textContent = text || "";
  el.className = `msg ${kind}`;
  el.hidden = !text;
}

/** Run an async action from a button: disabled while it runs, errors shown in `out`. */
export async function busy(button, out, action) {
  if (button) button.disabled = true;
  say(out, "");
  try {
    return await action();
  } catch (err) {
    say(out, err.message || String(err), "error");
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function badge(text, kind = text) {
  return h("span", {class: `badge state-${String(kind).replace(/[^a-z0-9_-]/gi, "")}`, text});
}
