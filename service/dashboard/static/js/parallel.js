// Parallel coordinates of an adaptive sweep's trials (GET /v1/sweeps/{id}/trials): one vertical
// axis per searched parameter (log where the space is log-uniform, categories evenly spaced) and
// one for the objective; each trial a polyline, darker the better its value. Trials without a
// value (running, failed, pruned) are grey and dashed, and stop at the parameters.
"use strict";

const ParallelCoordinates = (() => {
  const { el, num } = OL;
  const { svg, scale } = Charts;
  const W = 760, H = 300, TOP = 28, BOTTOM = 30, SIDE = 70;

  function axis(path, spec, trials) {
    const values = trials.map((t) => t.params[path]).filter((v) => v !== undefined && v !== null);
    if (spec && spec.choice) return { path, kind: "choice", choices: spec.choice.map(String) };
    if (values.some((v) => typeof v !== "number")) return { path, kind: "choice", choices: [...new Set(values.map(String))] };
    const log = Boolean(spec && spec.log_uniform);
    const range = spec && (spec.log_uniform || spec.uniform || spec.int);
    const [lo, hi] = range ? range : [Math.min(...values), Math.max(...values)];
    return { path, kind: "number", lo, hi, log };
  }

  function position(ax, value, bottom, top) {
    if (value === undefined || value === null) return null;
    if (ax.kind === "choice") {
      const i = ax.choices.indexOf(String(value));
      return ax.choices.length > 1 ? bottom + ((top - bottom) * i) / (ax.choices.length - 1) : (bottom + top) / 2;
    }
    return (ax.map ||= scale(ax.lo, ax.hi, bottom, top, ax.log))(value);
  }

  function draw(div, answer) {
    const trials = answer.trials;
    if (!trials.length) return div.replaceChildren(el("p", { class: "muted", text: "— no trials yet" }));
    const paths = Object.keys(answer.space || {});
    const finite = trials.map((t) => t.value).filter((v) => typeof v === "number");
    const objective = answer.objective ? `${answer.objective.which} ${answer.objective.metric}` : "value";
    const axes = paths.map((p) => axis(p, answer.space[p], trials));
    axes.push({ path: objective, kind: "number", lo: Math.min(...finite, 1), hi: Math.max(...finite, 0), log: false, value: true });
    if (finite.length) Object.assign(axes.at(-1), { lo: Math.min(...finite), hi: Math.max(...finite) });
    const step = (W - 2 * SIDE) / Math.max(1, axes.length - 1);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
    const minimize = !answer.objective || answer.objective.direction === "minimize";
    const rank = (v) => (finite.length > 1 ? (v - axes.at(-1).lo) / (axes.at(-1).hi - axes.at(-1).lo || 1) : 0);
    for (const t of trials) {
      const value = typeof t.value === "number" ? t.value : null;
      const points = axes
        .map((ax, i) => [SIDE + i * step, position(ax, ax.value ? value : t.params[ax.path], H - BOTTOM, TOP)])
        .filter(([, y]) => y !== null && Number.isFinite(y));
      const good = value === null ? 0 : minimize ? 1 - rank(value) : rank(value);
      const attrs = { points: points.map((p) => p.join(",")).join(" "), fill: "none", "stroke-width": 1.5 };
      attrs.stroke = value === null ? "#aaa" : `hsl(230 70% ${75 - 50 * good}%)`;
      if (value === null) attrs["stroke-dasharray"] = "4 3";
      plot.append(svg("polyline", attrs, undefined));
      plot.lastChild.append(svg("title", {}, `trial ${t.number} (${t.state}): ${num(value)}`));
    }
    axes.forEach((ax, i) => {
      const x = SIDE + i * step;
      plot.append(svg("line", { x1: x, x2: x, y1: TOP, y2: H - BOTTOM, class: "axis" }));
      plot.append(svg("text", { x, y: TOP - 10, "text-anchor": "middle" }, ax.path.split(".").pop()));
      const ends = ax.kind === "choice" ? [ax.choices[0], ax.choices.at(-1)] : [num(ax.lo, 3), num(ax.hi, 3)];
      plot.append(svg("text", { x: x + 3, y: H - BOTTOM + 14 }, ends[0]));
      plot.append(svg("text", { x: x + 3, y: TOP + 4 }, ends[1]));
    });
    div.dataset.trials = String(trials.length);
    div.replaceChildren(plot);
  }

  return { draw };
})();
