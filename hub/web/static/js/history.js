// The history page: the hub's sampled metrics over 1 h, 24 h or 7 d (GET /api/history), one
// SVG chart per family of series (spokes by state, workstreams by state, queue depth, boxes,
// commands running, tokens, latency per verb), redrawn every half minute.

import {enc, get} from "./api.js";
import {h, say, $, $$} from "./dom.js";
import {lineChart} from "./chart.js";
import {groupSeries} from "./series.js";
import {start} from "./page.js";

let range = "1h";
let timer = null;

async function draw() {
  const box = $("#charts");
  try {
    const data = await get(`/api/history?range=${enc(range)}`);
    say($("#history-msg"), "");
    const charts = groupSeries(data.series || {});
    // A hub younger than the range has nothing before its first sample: the charts start
    // there rather than squeeze everything against the right edge.
    const first = Math.min(...Object.values(data.series || {}).map((pts) => (pts.length ? pts[0][0] : Infinity)));
    const from = Number.isFinite(first) ? Math.max(data.from, first) : data.from;
    $("#span").textContent = `${new Date(from * 1000).toLocaleString()} — now, one point per ${data.step_s} s` +
      (from > data.from ? " (no samples before)" : "");
    box.replaceChildren();
    if (!charts.length) say($("#history-msg"), "No samples yet: the hub records its metrics every few seconds.", "info");
    for (const chart of charts) {
      const figure = h("figure", {data: {chart: chart.key}});
      box.append(figure);
      lineChart(figure, {title: chart.title, series: chart.series, from, to: data.to, unit: chart.unit});
    }
  } catch (err) {
    say($("#history-msg"), err.status === 404 ? "This hub keeps no history." : err.message, "error");
  }
}

function choose(next) {
  range = next;
  for (const b of $$("#ranges button")) {
    b.classList.toggle("on", b.dataset.range === range);
    b.setAttribute("aria-pressed", String(b.dataset.range === range));
  }
  history.replaceState(null, "", `?range=${range}`);
  draw();
}

start(async () => {
  const asked = new URLSearchParams(location.search).get("range");
  for (const b of $$("#ranges button")) b.addEventListener("click", () => choose(b.dataset.range));
  choose(["1h", "24h", "7d"].includes(asked) ? asked : "1h");
  clearInterval(timer);
  timer = setInterval(draw, 30000);
});
