// SVG line charts, drawn by hand: a time axis, a value axis with a few round ticks, one line
// per series, a legend, and a readout of the values under the pointer.
//
// Why our own: the pages load nothing from elsewhere and have no build step; a chart of a
// few hundred points per series is a polyline and some ticks. Colours come from CSS classes
// (series-0 … series-7), so nothing here writes a style attribute.

const NS = "http://www.w3.org/2000/svg";
const W = 640;
const H = 200;
const M = {left: 52, right: 12, top: 10, bottom: 24};

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Round tick values covering [0, max] (1, 2 or 5 × 10^k apart), about `count` of them. */
export function niceTicks(max, count = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

export function formatValue(v, unit = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const abs = Math.abs(v);
  let text;
  if (abs >= 1e9) text = `${(v / 1e9).toFixed(1)}G`;
  else if (abs >= 1e6) text = `${(v / 1e6).toFixed(1)}M`;
  else if (abs >= 1e4) text = `${(v / 1e3).toFixed(1)}k`;
  else if (abs >= 100 || Number.isInteger(v)) text = String(Math.round(v));
  else text = v.toFixed(abs >= 10 ? 1 : 2);
  return unit ? `${text} ${unit}` : text;
}

function timeLabel(ts, span) {
  const d = new Date(ts * 1000);
  if (span > 2 * 86400) return d.toLocaleDateString([], {month: "short", day: "numeric"}) +
    " " + d.toLocaleTimeString([], {hour: "2-digit"});
  if (span < 900) return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
}

/** The index of the point nearest to `ts` in a sorted [[ts, v], …]. */
function nearest(points, ts) {
  let lo = 0;
  let hi = points.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < ts) lo = mid; else hi = mid;
  }
  return Math.abs(points[lo][0] - ts) <= Math.abs(points[hi][0] - ts) ? lo : hi;
}

/**
 * Draw a chart into `figure` (emptied first).
 * series: [{name, points: [[ts, value|null], …]}]; from/to: the time range (Unix s).
 */
export function lineChart(figure, {title, series, from, to, unit = ""}) {
  while (figure.firstChild) figure.firstChild.remove();
  figure.classList.add("chart");
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  const readout = document.createElement("div");
  readout.className = "readout";
  readout.textContent = "\u00a0";
  figure.append(caption);

  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const t0 = from ?? Math.min(...all.map((p) => p[0]));
  const t1 = to ?? Math.max(...all.map((p) => p[0]));
  const span = Math.max(1, t1 - t0);
  const ticks = niceTicks(Math.max(0, ...all.map((p) => p[1])));
  const vmax = ticks[ticks.length - 1] || 1;
  const x = (ts) => M.left + ((ts - t0) / span) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - (v / vmax) * (H - M.top - M.bottom);

  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart-svg"});
  const axes = svg("g", {class: "axes"});
  for (const v of ticks) {
    axes.append(svg("line", {x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid"}));
    axes.append(svg("text", {x: M.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick"}, formatValue(v)));
  }
  for (let k = 0; k <= 4; k += 1) {
    const ts = t0 + (span * k) / 4;
    axes.append(svg("text", {x: x(ts), y: H - 6, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle",
      class: "tick"}, timeLabel(ts, span)));
  }
  axes.append(svg("line", {x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis"}));
  axes.append(svg("line", {x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis"}));
  root.append(axes);

  series.forEach((s, n) => {
    let d = "";
    let run = 0;  // points in the current stretch without a gap
    const dotIfAlone = () => { if (run === 1) d += "h0"; };  // a lone sample: a dot (round caps)
    for (const [ts, v] of s.points) {
      if (v === null || v === undefined) { dotIfAlone(); run = 0; continue; }  // a gap
      d += `${run ? "L" : "M"}${x(ts).toFixed(1)},${y(v).toFixed(1)}`;
      run += 1;
    }
    dotIfAlone();
    root.append(svg("path", {d: d || "M0,0", class: `line series-${n % 8}`, "data-series": s.name}));
  });

  const guide = svg("line", {y1: M.top, y2: H - M.bottom, class: "guide", visibility: "hidden"});
  const dots = series.map((s, n) => svg("circle", {r: 3, class: `dot series-${n % 8}`, visibility: "hidden"}));
  root.append(guide, ...dots);
  const hit = svg("rect", {x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom,
    class: "hit"});
  root.append(hit);

  const show = (clientX) => {
    const box = root.getBoundingClientRect();
    const px = ((clientX - box.left) / box.width) * W;
    const ts = t0 + ((px - M.left) / (W - M.left - M.right)) * span;
    const parts = [];
    let gx = null;
    let shownTs = null;
    series.forEach((s, n) => {
      if (!s.points.length) return;
      const [pts, v] = s.points[nearest(s.points, ts)];
      gx ??= x(pts);
      if (v === null || v === undefined) { dots[n].setAttribute("visibility", "hidden"); return; }
      dots[n].setAttribute("cx", x(pts));
      dots[n].setAttribute("cy", y(v));
      dots[n].setAttribute("visibility", "visible");
      parts.push(`${s.label || s.name}: ${formatValue(v, unit)}`);
      shownTs ??= pts;
    });
    if (gx === null) return;
    guide.setAttribute("x1", gx);
    guide.setAttribute("x2", gx);
    guide.setAttribute("visibility", "visible");
    readout.textContent = `${new Date((shownTs ?? ts) * 1000).toLocaleString()} — ${parts.join(", ") || "no data"}`;
  };
  const hide = () => {
    guide.setAttribute("visibility", "hidden");
    for (const dot of dots) dot.setAttribute("visibility", "hidden");
    readout.textContent = "\u00a0";
  };
  hit.addEventListener("mousemove", (ev) => show(ev.clientX));
  hit.addEventListener("mouseleave", hide);

  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, n) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch series-${n % 8}`;
    const last = [...s.points].reverse().find((p) => p[1] !== null && p[1] !== undefined);
    item.append(swatch, `${s.label || s.name}${last ? ` (now ${formatValue(last[1], unit)})` : ""}`);
    legend.append(item);
  });
  if (!all.length) {
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "nodata"}, "no samples in this range yet"));
  }
  figure.append(root, readout, legend);
  return root;
}
