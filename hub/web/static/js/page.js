// What every signed-in page does first: find out who is here (GET /api/session; signed out
// means /signin), show the user and role in the header, wire "Sign out", and reveal only the
// controls the role may use. Hiding is a courtesy: the API refuses a role too low anyway.

import {allows, loadSession, signOut} from "./api.js";
import {$, $$, say, startTicker} from "./dom.js";

/** Elements marked `data-need="operator|admin"` start hidden in the markup and are shown
 * only to roles that may use them. */
export function applyRole(role, root = document) {
  for (const el of $$("[data-need]", root)) el.hidden = !allows(role, el.dataset.need);
  document.body.dataset.role = role;
}

export async function boot() {
  const session = await loadSession();  // a 401 has already sent us to /signin
  $("#who").textContent = `${session.user} (${session.role})`;
  $("#signout").addEventListener("click", async () => {
    try {
      await signOut();
    } finally {
      location.assign("/signin");
    }
  });
  applyRole(session.role);
  startTicker();
  return session;
}

/** Boot a page, showing a failure to start (hub down, API error) instead of a blank page. */
export function start(main) {
  const fail = (err) => {
    if (err?.status === 401) return;  // on the way to /signin
    say($("#page-error"), `This page could not load: ${err?.message || err}`, "error");
  };
  boot().then(main).catch(fail);
}
