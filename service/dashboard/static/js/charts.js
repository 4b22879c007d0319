// Charts: a sweep's bulk curves reduced to one mean line and one min..max band per configuration
// (50 configurations draw as fast as 500 raw lines would not, and read better), uPlot line charts
// with bands and log axes lined at decades, and a small SVG plot for the few-point panels (lr
// sensitivity, parallel axes).
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

  // Log axes get a line per decade only (uPlot's default also draws 2..9 in every decade, which
  // turns squeezed decades into grey stripes); under two decades, 1-2-5 so that labels remain.
  function logSplits(u, axisIdx, min, max) {
    const lo = Math.floor(Math.log10(min)), hi = Math.ceil(Math.log10(max));
    const steps = Math.log10(max / min) < 2 ? [1, 2, 5] : [1];
    const splits = [];
    for (let p = lo; p <= hi; p++) {
      for (const m of steps) {
        const v = +(m * 10 ** p).toPrecision(6);
        if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) splits.push(v);
      }
    }
    return splits.length ? splits : [min, max];
  }

  const logTick = (v) => (v === null ? "" : v >= 1e5 || v < 1e-3 ? v.toExponential(0).replace("+", "") : v.toLocaleString("en-US"));

  // uPlot pads a log range out to whole decades (often an empty one); 5% of the span is enough.
  function logRange(u, min, max) {
    if (min === null || max === null) return [0.1, 1];
    const pad = 10 ** (0.05 * (Math.log10(max / min) || 1));
    return [min / pad, max * pad];
  }

  function axis(label, log, extra = {}) {
    if (!log) return { label, ...extra };
    return { label, ...extra, splits: logSplits, values: (u, splits) => splits.map(logTick) };
  }

  // lines → uPlot series and data; each line's group names the series it owns (its mean line,
  // then its band's max and min edges) so that a hover can dim or light them together.
  function seriesOf(lines, xLabel, fix) {
    const series = [{ label: xLabel }], data = [], bands = [], groups = [];
    for (const line of lines) {
      const group = { key: line.key ?? line.label, label: line.label, colour: line.colour, dash: line.dash, mean: series.length, series: [series.length] };
      series.push({ label: line.label, stroke: line.colour, width: 1.5, dash: line.dash || undefined, points: { show: false } });
      data.push(fix(line.values));
      if (line.band) {
        const hi = series.length;
        series.push({ label: `${line.label} max`, stroke: "transparent", points: { show: false } });
        series.push({ label: `${line.label} min`, stroke: "transparent", points: { show: false } });
        data.push(fix(line.band.hi), fix(line.band.lo));
        bands.push({ series: [hi, hi + 1], fill: line.band.fill });
        group.series.push(hi, hi + 1);
      }
      groups.push(group);
    }
    return { series, data, bands, groups };
  }

  const drawn = new WeakMap(); // div → its chart and resize handler, released when redrawn

  function release(div) {
    const old = drawn.get(div);
    if (!old) return;
    window.removeEventListener("resize", old.resize);
    old.chart.destroy();
    drawn.delete(div);
  }

  // lines: [{label, values, colour, key?, dash?, band?: {lo, hi, fill}}] over x; one uPlot chart.
  // Hovering it names the nearest line (ChartFocus); chart.highlight(key) lights one line from
  // outside, and onFocus(key or null) hears which line the reader points at.
  function lineChart(div, x, lines, { log = true, xLabel = "epoch", yLabel = "", xLog = false, onFocus = null } = {}) {
    const { series, data, bands, groups } = seriesOf(lines, xLabel, log ? positive : (v) => v);
    release(div);
    div.textContent = "";
    // Epochs and trial counts are whole numbers: no tick at 1.5.
    const wholeTicks = xLog ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] };
    const focus = ChartFocus.plugin(groups, onFocus);
    const chart = new uPlot(
      {
        width: Math.max(320, div.clientWidth || 800),
        height: HEIGHT,
        scales: { x: { time: false, distr: xLog ? 3 : 1 }, y: log ? { distr: 3, range: logRange } : {} },
        axes: [axis(xLabel, xLog, wholeTicks), axis(yLabel, log, { size: 60 })],
        series,
        bands,
        legend: { show: false }, // it would list every band's edges: ours names the lines only
        cursor: { drag: { x: true, y: true }, points: { show: false } },
        plugins: [focus],
      },
      [x, ...data],
      div,
    );
    chart.highlight = focus.highlight;
    if (lines.length <= 12) {
      div.append(OL.el("ul", { class: "legend inline" }, ...lines.map((l) => OL.el("li", {}, OL.swatch(l.colour, l.dash), l.label))));
    }
    const resize = () => chart.setSize({ width: Math.max(320, div.clientWidth), height: HEIGHT });
    window.addEventListener("resize", resize);
    drawn.set(div, { chart, resize });
    return chart;
  }

  // A sweep's configurations as mean lines with min..max bands, styled as Configs.styles says
  // (hue per optimizer, shade per setting, dash per schedule) and named by labelOf(config).
  function configCurves(div, aggregated, styles, metric, { onFocus = null, labelOf = Configs.label } = {}) {
    const lines = aggregated.configs.map((c) => {
      const style = styles.get(c.hash) || { line: "#444", band: "rgba(0,0,0,0.1)", dash: null };
      const band = { lo: c.lo, hi: c.hi, fill: style.band };
      return { key: c.hash, label: labelOf(c.config), values: c.mean, colour: style.line, dash: style.dash, band };
    });
    const chart = lineChart(div, aggregated.x, lines, { log: metric.includes("loss"), yLabel: metric, onFocus });
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

  // A linear or log scale from the data's [lo, hi] onto [a, b] pixels, with a few tick values.
  // With `padded`, the range grows 6% of its span each side, so no point sits on a border, and a
  // log range that spans a decade or more reaches the decades around the data, so that ticks
  // bracket it (a narrower one gets 1-2-5 ticks instead).
  function scale(lo, hi, a, b, log, padded = false) {
    const f = log ? Math.log10 : (v) => v;
    let [l, h] = [f(lo), f(hi)];
    if (!(h > l)) [l, h] = [l - 0.5, h + 0.5];
    const pad = padded ? Math.max(0.06 * (h - l), log ? 0.05 : 0) : 0;
    const wide = padded && log && h - l >= 1;
    [l, h] = [wide ? Math.min(Math.floor(l), l - pad) : l - pad, wide ? Math.max(Math.ceil(h), h + pad) : h + pad];
    const map = (v) => a + ((f(v) - l) / (h - l)) * (b - a);
    const ticks = [];
    const steps = padded && !wide ? [1, 2, 5] : [1];
    if (log) for (let p = Math.floor(l); p <= Math.ceil(h); p++) for (const m of steps) ticks.push(+(m * 10 ** p).toPrecision(6));
    else for (let i = 0; i <= 4; i++) ticks.push(l + ((h - l) * i) / 4);
    map.ticks = ticks.filter((t) => f(t) >= l - 1e-9 && f(t) <= h + 1e-9);
    return map;
  }

  return { aggregate, lineChart, configCurves, svg, scale };
})();
