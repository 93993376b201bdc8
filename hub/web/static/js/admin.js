// The admin sections of the dashboard: join tokens (create one and show the exact
// `spoke join …` to run, list, revoke), API keys (the key is shown once, at creation) and
// users. Only admins get these sections; the API refuses everyone else anyway.

import {api, enc, get} from "./api.js";
import {badge, busy, copyText, h, renderRows, say, timeCell, $} from "./dom.js";

let refresh = () => {};

function revokeButton(label, what, path, out) {
  return h("button", {type: "button", class: "danger small", text: label, on: {click: async (ev) => {
    if (!confirm(`${label} ${what}?`)) return;
    await busy(ev.target, out, async () => { await api("DELETE", path); refresh(); });
  }}});
}

export async function refreshAdmin() {
  const [tokens, keys, users] = await Promise.allSettled([
    get("/api/tokens"), get("/api/apikeys"), get("/api/users")]);
  if (tokens.status === "fulfilled") {
    renderRows($("#tokens tbody"), tokens.value.slice(0, 50), (t) => h("tr", {data: {token: t.id, state: t.state}},
      h("td", {class: "mono", text: t.id}), h("td", {text: t.name}), h("td", {}, badge(t.state)),
      h("td", {}, t.state === "valid" ? timeCell(t.expires_at) : "—"),
      h("td", {}, t.state === "valid" ? revokeButton("Revoke", `token ${t.id}`, `/api/tokens/${enc(t.id)}`, $("#token-new .msg")) : null)),
    "no tokens");
  }
  if (keys.status === "fulfilled") {
    renderRows($("#apikeys tbody"), keys.value.filter((k) => !k.revoked_at), (k) => h("tr", {data: {key: k.id}},
      h("td", {class: "mono", text: k.id}), h("td", {text: k.name}), h("td", {text: k.role || "admin"}),
      h("td", {}, timeCell(k.created_at)), h("td", {}, timeCell(k.last_used)),
      h("td", {}, revokeButton("Revoke", `API key ${k.name}`, `/api/apikeys/${enc(k.id)}`, $("#key-new .msg")))),
    "no active keys");
  }
  if (users.status === "fulfilled") {
    const list = Array.isArray(users.value) ? users.value : users.value.users || [];
    renderRows($("#users tbody"), list, (u) => h("tr", {data: {user: u.name}},
      h("td", {text: u.name}), h("td", {text: u.role}), h("td", {}, timeCell(u.created_at)),
      h("td", {}, revokeButton("Remove", `user ${u.name}`, `/api/users/${enc(u.name)}`, $("#user-new .msg")))),
    "no users");
  } else {
    say($("#user-new .msg"), users.reason.message, "error");
  }
}

function copyButton(button, input) {
  $(button).addEventListener("click", async (ev) => {
    const ok = await copyText($(input).value, $(input));
    ev.target.textContent = ok ? "Copied" : "Select and copy";
    setTimeout(() => { ev.target.textContent = "Copy"; }, 2000);
  });
}

function onSubmit(form, action) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await busy(form.querySelector("button[type=submit]"), form.querySelector(".msg"),
      () => action(new FormData(form)));
  });
}

export function wireAdmin(refreshSoon) {
  refresh = refreshSoon;
  onSubmit($("#token-new"), async (data) => {
    const made = await api("POST", "/api/tokens", {name: data.get("name"), ttl: data.get("ttl")});
    $("#join-cmd").value = `spoke join ${made.token}`;
    $("#join-note").textContent = `For spoke ${made.name}; valid once, until ${new Date(made.expires_at * 1000).toLocaleString()}.`;
    $("#join").hidden = false;
    refresh();
  });
  copyButton("#join-copy", "#join-cmd");

  onSubmit($("#key-new"), async (data) => {
    const made = await api("POST", "/api/apikeys", {name: data.get("name"), role: data.get("role")});
    $("#key-value").value = made.key;
    $("#key-shown").hidden = false;
    refresh();
  });
  copyButton("#key-copy", "#key-value");

  onSubmit($("#user-new"), async (data) => {
    const body = {name: data.get("name"), role: data.get("role")};
    if (data.get("password")) body.password = data.get("password");  // else the hub makes one
    const made = await api("POST", "/api/users", body);
    $("#user-new").reset();
    $("#user-shown").hidden = !made.password;
    $("#user-password").value = made.password || "";
    say($("#user-new .msg"), `user ${made.name} added (${made.role})`, "ok");
    refresh();
  });
  copyButton("#user-copy", "#user-password");
}
