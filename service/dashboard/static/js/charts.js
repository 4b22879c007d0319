// Charts: a sweep's bulk curves reduced to one mean line and one min..max band per configuration
// (50 configurations draw as fast as 500 raw lines would not, and read better), uPlot line charts
// with bands, and a small SVG plot for the few-point panels (lr sensitivity, parallel axes).
"use strict";

const Charts = (() => {
  const HEIGHT = 340;

  // Bulk metrics ({columns, rows: [[job_id, epoch, ...]], jobs}) → per configuration, per epoch:
  // mean, min and max of `column` over its jobs. One pass over the rows into typed arrays.
  function aggregate(bulk, column, keep) {
    const at = bulk.columns.indexOf(column);
    const configOf = new Map();
    const configs = [];
    const index = new Map();
    for (const job of bulk.jobs) {
      const hash = job.config_hash || `job${job.job_id}`;
      if (keep && !keep(hash)) continue;
      if (!index.has(hash)) {
        index.set(hash, configs.length);
        configs.push({ hash, config: job.config || {}, jobs: 0 });
      }
      configs[index.get(hash)].jobs += 1;
      configOf.set(job.job_id, index.get(hash));
    }
    let epochs = 0;
    for (const row of bulk.rows) if (row[1] > epochs && configOf.has(row[0])) epochs = row[1];
    const size = configs.length * (epochs + 1);
    const sum = new Float64Array(size), count = new Uint32Array(size);
    const low = new Float64Array(size).fill(Infinity), high = new Float64Array(size).fill(-Infinity);
    for (const row of bulk.rows) {
      const c = configOf.get(row[0]), value = row[at];
      if (c === undefined || value === null || at < 0) continue;
      const i = c * (epochs + 1) + row[1];
      sum[i] += value;
      count[i] += 1;
      if (value < low[i]) low[i] = value;
      if (value > high[i]) high[i] = value;
    }
    const x = Array.from({ length: epochs }, (_, e) => e + 1);
    for (const [c, config] of configs.entries()) {
      const base = c * (epochs + 1);
      const pick = (f) => x.map((e) => (count[base + e] ? f(base + e) : null));
      config.mean = pick((i) => sum[i] / count[i]);
      config.lo = pick((i) => low[i]);
      config.hi = pick((i) => high[i]);
      config.points = config.mean.reduce((n, v) => n + (v === null ? 0 : 1), 0);
    }
    return { x, configs: configs.filter((c) => c.points > 0) };
  }

  // A log scale cannot show zero or less: those values become gaps.
  const positive = (values) => values.map((v) => (v !== null && v > 0 ? v : null));

  // lines: [{label, values, colour, dash?, band?: {lo, hi, fill}}] over x; one uPlot chart.
  function lineChart(div, x, lines, { log = true, xLabel = "epoch", yLabel = "", xLog = false } = {}) {
    const series = [{ label: xLabel }];
    const data = [x];
    const bands = [];
    const fix = log ? positive : (v) => v;
    for (const line of lines) {
      series.push({ label: line.label, stroke: line.colour, width: 1.5, dash: line.dash, points: { show: false } });
      data.push(fix(line.values));
      if (line.band) {
        const hi = data.length;
        series.push({ label: `${line.label} max`, stroke: "transparent", points: { show: false } });
        series.push({ label: `${line.label} min`, stroke: "transparent", points: { show: false } });
        data.push(fix(line.band.hi), fix(line.band.lo));
        bands.push({ series: [hi, hi + 1], fill: line.band.fill });
      }
    }
    div.textContent = "";
    const chart = new uPlot(
      {
        width: Math.max(320, div.clientWidth || 800),
        height: HEIGHT,
        scales: { x: { time: false, distr: xLog ? 3 : 1 }, y: { distr: log ? 3 : 1 } },
        // Epochs and trial counts are whole numbers: no tick at 1.5.
        axes: [{ label: xLabel, incrs: xLog ? undefined : [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { label: yLabel, size: 60 }],
        series,
        bands,
        legend: { show: false }, // it would list every band's edges: ours names the lines only
        cursor: { drag: { x: true, y: true } },
      },
      data,
      div,
    );
    if (lines.length <= 12) {
      div.append(OL.el("ul", { class: "legend inline" }, ...lines.map((l) => OL.el("li", {}, OL.swatch(l.colour), l.label))));
    }
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(320, div.clientWidth), height: HEIGHT }));
    return chart;
  }

  // A sweep's configurations as mean lines with min..max bands, coloured per optimizer.
  function configCurves(div, aggregated, colours, metric) {
    const lines = aggregated.configs.map((c) => {
      const colour = colours.get(c.hash) || { line: "#444", band: "rgba(0,0,0,0.1)" };
      return { label: OL.label(c.config), values: c.mean, colour: colour.line, band: { lo: c.lo, hi: c.hi, fill: colour.band } };
    });
    const chart = lineChart(div, aggregated.x, lines, { log: metric.includes("loss"), yLabel: metric });
    div.dataset.bands = String(lines.length);
    div.dataset.points = String(aggregated.configs.reduce((n, c) => n + c.points, 0));
    return chart;
  }

  const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace name, not a request

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A linear or log scale from [lo, hi] onto [a, b] pixels, with a few tick values.
  function scale(lo, hi, a, b, log) {
    const f = log ? Math.log10 : (v) => v;
    let [l, h] = [f(lo), f(hi)];
    if (!(h > l)) [l, h] = [l - 0.5, h + 0.5];
    const map = (v) => a + ((f(v) - l) / (h - l)) * (b - a);
    const ticks = [];
    if (log) for (let p = Math.floor(l); p <= Math.ceil(h); p++) ticks.push(10 ** p);
    else for (let i = 0; i <= 4; i++) ticks.push(lo + ((hi - lo) * i) / 4);
    map.ticks = ticks.filter((t) => f(t) >= l - 1e-9 && f(t) <= h + 1e-9);
    return map;
  }

  return { aggregate, lineChart, configCurves, svg, scale };
})();
