// The pages' one way to the hub's REST API: same-origin fetch with the session cookie, the
// CSRF header on every state-changing call, and the API's error shape turned into messages
// a person can act on. Streams (NDJSON) are read with fetch + ReadableStream.

let csrf = "";
let session = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const STATUS_HINT = {
  401: "You are signed out",
  403: "Not allowed for your role",
  404: "Not found",
  413: "Too large",
  429: "Too many requests",
  503: "Unavailable",
};

/** The API's `{"error": {"code", "message"}}`, with what the status means to a person. */
export async function errorFrom(res) {
  let code = "internal";
  let message = "";
  try {
    const body = await res.json();
    code = body?.error?.code || code;
    message = body?.error?.message || "";
  } catch {
    // Not JSON (a proxy's page): fall back to the status text.
  }
  const hint = STATUS_HINT[res.status] || `HTTP ${res.status}`;
  let text = message ? `${hint}: ${message}` : hint;
  const retry = res.headers.get("Retry-After");
  if (res.status === 429 && retry && !/try again/i.test(text)) text += ` (try again in ${retry} s)`;
  return new ApiError(res.status, code, text);
}

/** Where a signed-out visitor goes: /signin, with a way back to this page. */
export function signinUrl() {
  const here = location.pathname + location.search + location.hash;
  return `/signin?next=${encodeURIComponent(here)}`;
}

function signedOut() {
  if (location.pathname !== "/signin") location.assign(signinUrl());
}

function options(method, body, signal) {
  const headers = {Accept: "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf;
  return {
    method, headers, signal, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  };
}

/** fetch, with network failures as an ApiError and HTTP errors thrown (a 401 also sends
 * the page to /signin unless `quiet401`). */
export async function request(method, path, body, {signal, quiet401 = false} = {}) {
  let res;
  for (let attempt = 0; ; attempt += 1) {
    try {
      res = await fetch(path, options(method, body, signal));
      break;
    } catch (err) {
      if (err.name === "AbortError") throw err;
      // A read is tried once more after a network blip (Chromium drops requests in flight
      // when the machine's interfaces change, as Docker's do); a write never is: it may
      // have arrived.
      if (method === "GET" && attempt === 0) {
        await new Promise((resolve) => setTimeout(resolve, 300));
        continue;
      }
      throw new ApiError(0, "unavailable", `The hub cannot be reached (${err.message})`);
    }
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401 && !quiet401) signedOut();
    throw err;
  }
  return res;
}

/** A JSON call: the decoded body (or the text of a non-JSON answer). */
export async function api(method, path, body, opts) {
  const res = await request(method, path, body, opts);
  const type = res.headers.get("Content-Type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export const get = (path, opts) => api("GET", path, undefined, opts);

/** The lines of an NDJSON response, decoded, as they arrive. */
export async function* ndjson(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buf.trim()) yield JSON.parse(buf);
  } finally {
    reader.releaseLock();
  }
}

// ------------------------------------------------------------------ the session
export const ROLES = ["viewer", "operator", "admin"];

/** Whether `role` may do what `need` may (admin > operator > viewer). */
export function allows(role, need) {
  return ROLES.indexOf(role) >= ROLES.indexOf(need) && ROLES.includes(need);
}

/** The signed-in user `{user, role, csrf}`; a signed-out visitor is sent to /signin. */
export async function loadSession() {
  session = await get("/api/session");
  csrf = session.csrf || "";
  return session;
}

export function currentSession() {
  return session;
}

export async function signIn(user, password) {
  const res = await request("POST", "/api/session", {user, password}, {quiet401: true});
  session = await res.json();
  csrf = session.csrf || "";
  return session;
}

export async function signOut() {
  try {
    await request("DELETE", "/api/session", undefined, {quiet401: true});
  } finally {
    session = null;
    csrf = "";
  }
}

/** Only same-site paths are followed after sign-in (no open redirect). */
export function safeNext(raw) {
  return raw && raw.startsWith("/") && !raw.startsWith("//") && !raw.startsWith("/\\")
    ? raw : "/";
}

export const enc = encodeURIComponent;
