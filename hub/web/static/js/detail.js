// The dashboard's detail panel: one thing opened at a time (a workstream's live transcript,
// a box's logs, stats and command box). Whatever it opened (streams, timers) is stopped when
// it closes or something else opens, so a panel never keeps a connection it does not show.

import {$, clear} from "./dom.js";

let cleanup = null;

export function closeDetail() {
  if (cleanup) { try { cleanup(); } catch { /* already gone */ } }
  cleanup = null;
  $("#detail").hidden = true;
  clear($("#detail-body"));
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

/** Open the panel: `build(body)` draws into it and returns a function that stops it. */
export function openDetail(title, hash, build) {
  closeDetail();
  $("#detail-title").textContent = title;
  $("#detail").hidden = false;
  cleanup = build($("#detail-body")) || null;
  if (hash) history.replaceState(null, "", `#${hash}`);
  $("#detail").scrollIntoView({block: "nearest"});
}

export function wireDetail() {
  $("#detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("#detail").hidden && !ev.target.closest("input, textarea")) closeDetail();
  });
}
