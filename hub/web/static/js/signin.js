// The sign-in page: POST /api/session, then back to the page that sent the visitor here.
// Already signed in: straight on. The hub's answer (wrong password, rate limited with the
// wait, cross-site refused) is shown as it says it.

import {get, safeNext, signIn} from "./api.js";
import {$, say} from "./dom.js";

const next = safeNext(new URLSearchParams(location.search).get("next"));

get("/api/session", {quiet401: true}).then(() => location.replace(next)).catch(() => {});

$("#signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const button = form.querySelector("button");
  button.disabled = true;
  say($("#signin-msg"), "");
  try {
    await signIn(form.user.value.trim(), form.password.value);
    location.assign(next);
  } catch (err) {
    const text = err.status === 401 ? "Wrong user name or password." : err.message;
    say($("#signin-msg"), text, "error");
    form.password.select();
  } finally {
    button.disabled = false;
  }
});
