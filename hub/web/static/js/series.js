// How the history page groups the hub's metric series (hub/history.py names them) into
// charts. Kept apart from history.js, which is the page's entry point, so it can be tested
// and reused without starting a page.

const TITLES = {
  spokes: "Spokes by state",
  workstreams: "Workstreams by state",
  queue: "Queue depth",
  boxes: "Boxes",
  execs: "Commands running",
  tokens: "Model tokens used",
};

/** Series names (hub/history.py) → charts: `latency.pNN.VERB` (seconds) one chart per verb
 * with its percentiles as lines, in ms; any other `FAMILY.NAME` one chart per family. */
export function groupSeries(series) {
  const charts = new Map();
  for (const [name, raw] of Object.entries(series)) {
    let key;
    let title;
    let label;
    let unit = "";
    let points = raw;
    const lat = /^latency\.(p\d+)\.(.+)$/.exec(name);
    if (lat) {
      key = `latency.${lat[2]}`;
      title = `Latency of ${lat[2]}`;
      label = lat[1];
      unit = "ms";
      points = raw.map(([ts, v]) => [ts, v === null ? null : v * 1000]);
    } else {
      const dot = name.indexOf(".");
      key = dot > 0 ? name.slice(0, dot) : name;
      title = TITLES[key] || key;
      label = dot > 0 ? name.slice(dot + 1) : name;
    }
    if (!charts.has(key)) charts.set(key, {key, title, unit, series: []});
    charts.get(key).series.push({name, label, points});
  }
  for (const chart of charts.values()) chart.series.sort((a, b) => a.label.localeCompare(b.label));
  // The cluster's state first (in the order of TITLES), then anything new, latency last.
  const known = Object.keys(TITLES);
  const order = (k) => (k.startsWith("latency.") ? 1000 : known.includes(k) ? known.indexOf(k) : 500);
  return [...charts.values()].sort((a, b) => order(a.key) - order(b.key) || a.key.localeCompare(b.key));
}
