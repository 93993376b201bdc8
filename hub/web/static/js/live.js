// Live updates that resume from a cursor, so a reconnect neither loses nor repeats anything.
//
// Two feeds:
// - the hub's events timeline: Server-Sent Events (`/api/events/stream`, `id:` lines; the
//   browser's EventSource reconnects by itself and sends Last-Event-ID), falling back to
//   polling `/api/events?after=ID` when EventSource cannot connect at all;
// - one workstream's events: the NDJSON stream `/api/ws/{id}/stream?after=SEQ`, reopened
//   from the last seq after a drop, falling back to long-polling `/events?wait=25` when
//   streaming keeps failing (a proxy that buffers it, say).
// Both drop anything at or below the cursor they already passed on.

import {enc, get, ndjson, request} from "./api.js";

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
});

/** Follow the hub's events timeline from `after`. Calls onEvent(event) once per event in
 * id order and onMode("live"|"polling"|"offline"). Returns {stop()}. */
export function followEvents({after = 0, onEvent, onMode = () => {}, pollMs = 3000}) {
  let last = after;
  let stopped = false;
  let source = null;
  let failures = 0;
  const controller = new AbortController();

  const deliver = (event) => {
    const id = Number(event.id);
    if (!(id > last)) return;  // already shown (a replay after reconnect)
    last = id;
    onEvent(event);
  };

  // Polling, until the stream is worth another try (a minute on, if polls work).
  const poll = async () => {
    onMode("polling");
    const since = Date.now();
    while (!stopped) {
      try {
        const page = await get(`/api/events?after=${last}`, {signal: controller.signal});
        for (const event of page.events || []) deliver(event);
        onMode("polling");
        if (Date.now() - since > 60000 && typeof EventSource !== "undefined") { connect(); return; }
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (err.status === 404 || err.status === 403) { onMode("offline"); return; }
        onMode("reconnecting");
      }
      await sleep(pollMs, controller.signal);
    }
  };

  const connect = () => {
    failures = 0;
    if (typeof EventSource === "undefined") { poll(); return; }
    source = new EventSource(`/api/events/stream?after=${last}`);
    const onMessage = (msg) => {
      failures = 0;
      onMode("live");
      let event;
      try { event = JSON.parse(msg.data); } catch { return; }
      if (event.id === undefined && msg.lastEventId) event.id = Number(msg.lastEventId);
      if (event.id !== undefined) deliver(event);
    };
    source.addEventListener("message", onMessage);
    source.addEventListener("event", onMessage);
    source.addEventListener("open", () => { failures = 0; onMode("live"); });
    source.addEventListener("error", () => {
      failures += 1;
      // CLOSED: the hub answered with an error (no stream here, or signed out); the browser
      // will not retry. Several failed reconnects in a row: stop hammering, poll instead.
      if (source.readyState === EventSource.CLOSED || failures >= 3) {
        source.close();
        source = null;
        if (!stopped) poll();
      } else {
        onMode("reconnecting");
      }
    });
  };

  connect();
  return {
    stop() {
      stopped = true;
      controller.abort();
      source?.close();
    },
    get last() { return last; },
  };
}

/** Follow one workstream's events after `after`. onEvent(event) gets each event once, in seq
 * order; onStatus("live"|"reconnecting"|"polling"|"error: …"). Returns {stop(), last}. */
export function followWorkstream(wsId, {after = 0, onEvent, onStatus = () => {}}) {
  let last = after;
  let stopped = false;
  const controller = new AbortController();
  const base = `/api/ws/${enc(wsId)}`;

  const deliver = (event) => {
    if (event.keepalive || !(event.seq > last)) return;
    last = event.seq;
    onEvent(event);
  };

  // One stream until it ends; true if anything (an event or a keepalive) came through. The
  // hub sends a keepalive line every 15 s: a stream silent for 40 s is dead or held back by
  // a proxy, and is dropped.
  const streamOnce = async () => {
    const attempt = new AbortController();
    const onStop = () => attempt.abort();
    controller.signal.addEventListener("abort", onStop, {once: true});
    let watchdog = null;
    let got = false;
    let silent = false;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { silent = true; attempt.abort(); }, 40000);
    };
    try {
      const res = await request("GET", `${base}/stream?after=${last}`, undefined, {signal: attempt.signal});
      onStatus("live");
      arm();
      for await (const event of ndjson(res)) {
        arm();
        got = true;
        deliver(event);
      }
    } catch (err) {
      if (!silent) throw err;
    } finally {
      clearTimeout(watchdog);
      controller.signal.removeEventListener("abort", onStop);
    }
    return got;
  };

  const longPoll = async () => {
    const events = await get(`${base}/events?after=${last}&wait=25`, {signal: controller.signal});
    for (const event of events) deliver(event);
    onStatus("polling");
  };

  const fatal = (err) => {
    if (![401, 403, 404].includes(err.status)) return false;
    onStatus(`error: ${err.message}`);
    return true;
  };

  (async () => {
    let delay = 500;
    let badStreams = 0;  // streams that failed while the hub answered polls: a proxy in the way?
    let pollingSince = 0;
    while (!stopped) {
      try {
        if (!pollingSince) {
          let ok = false;
          try {
            ok = await streamOnce();
          } catch (err) {
            if (stopped || fatal(err)) return;
            await longPoll();  // the hub answers a poll (else this throws: it is away)
          }
          badStreams = ok ? 0 : badStreams + 1;
          if (badStreams >= 3) pollingSince = Date.now();
        } else {
          await longPoll();
          if (Date.now() - pollingSince > 60000) { pollingSince = 0; badStreams = 0; }  // try again
        }
        delay = 500;
      } catch (err) {
        if (stopped || fatal(err)) return;
        // The hub is away (restarting, say): wait, then pick up from the last seq.
        onStatus("reconnecting");
        await sleep(delay, controller.signal);
        delay = Math.min(delay * 2, 5000);
      }
    }
  })();

  return {
    stop() {
      stopped = true;
      controller.abort();
    },
    get last() { return last; },
  };
}
