// A sweep page's verdict panels, loaded after the page is ready, each on its own so that a slow or
// failing analysis leaves the others (and the leaderboard) alone: lr sensitivity with diverged
// runs marked (/divergence), the top two configurations paired over seeds (/compare), expected
// best after k trials (/budget) and parallel coordinates of an adaptive sweep's trials (/trials).
"use strict";

const SweepPanels = (() => {
  const { $, el, json, num, swatch } = OL;
  const { svg, scale } = Charts;
  const W = 560, H = 300, M = { left: 56, right: 12, top: 18, bottom: 34 };

  function note(div, text) {
    div.replaceChildren(el("p", { class: "muted", text }));
  }

  function axes(plot, x, y, xLabel, yLabel) {
    for (const t of x.ticks) {
      plot.append(svg("line", { x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom, class: "grid" }));
      plot.append(svg("text", { x: x(t), y: H - M.bottom + 14, "text-anchor": "middle" }, num(t, 2)));
    }
    for (const t of y.ticks) {
      plot.append(svg("line", { x1: M.left, x2: W - M.right, y1: y(t), y2: y(t), class: "grid" }));
      plot.append(svg("text", { x: M.left - 4, y: y(t) + 4, "text-anchor": "end" }, num(t, 2)));
    }
    plot.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
    plot.append(svg("text", { x: 12, y: M.top - 6 }, yLabel));
  }

  // Each run's final metric against its lr (log x), a line through each lr's mean; a diverged
  // run has no value, so it is a cross on the top edge at its lr.
  function divergence(div, answer) {
    const groups = answer.groups.filter((g) => g.lrs.length);
    const runs = groups.flatMap((g) => g.lrs.flatMap((l) => l.jobs.map((j) => ({ ...j, lr: l.lr }))));
    // A diverged run is drawn as a cross on the top edge, so its (huge) last value sets no range.
    const values = runs.filter((r) => r.status !== "diverged").map((r) => r.value).filter((v) => v !== null && v > 0);
    if (!runs.length) return note(div, "— no learning rates to compare");
    const lrs = runs.map((r) => r.lr);
    const log = answer.metric.includes("loss");
    const x = scale(Math.min(...lrs), Math.max(...lrs), M.left, W - M.right, true, true);
    const y = scale(values.length ? Math.min(...values) : 1, values.length ? Math.max(...values) : 10, H - M.bottom, M.top + 16, log, true);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
    axes(plot, x, y, "lr (log)", `${answer.which} ${answer.metric}`);
    const hue = Configs.styles(groups.map((g) => ({ hash: g.group, config: { "optimizer.name": g.optimizer, ...g.config } })));
    const legend = el("ul", { class: "legend" });
    let diverged = 0;
    for (const g of groups) {
      const { line: colour, dash } = hue.get(g.group);
      const means = g.lrs.filter((l) => l.mean !== null && l.mean > 0).map((l) => `${x(l.lr)},${y(l.mean)}`);
      const stroke = { stroke: colour, fill: "none", ...(dash ? { "stroke-dasharray": dash.join(" ") } : {}) };
      if (means.length > 1) plot.append(svg("polyline", { points: means.join(" "), ...stroke }));
      for (const l of g.lrs) {
        for (const j of l.jobs) {
          if (j.status === "diverged" || j.value === null) {
            diverged += j.status === "diverged" ? 1 : 0;
            plot.append(svg("text", { x: x(l.lr), y: M.top + 8, fill: colour, class: "diverged", "text-anchor": "middle" }, "✕"));
          } else if (j.value > 0 || !log) {
            plot.append(svg("circle", { cx: x(l.lr), cy: y(j.value), r: 3, fill: colour, "fill-opacity": 0.7 }));
          }
        }
      }
      const stable = g.stable_max_lr !== null ? `stable up to lr ${num(g.stable_max_lr)}` : "no lr without divergence";
      const lost = g.diverged_min_lr !== null ? `, all diverge from ${num(g.diverged_min_lr)}` : "";
      legend.append(el("li", {}, swatch(colour, dash), `${g.group}: ${stable}${lost}`));
    }
    div.dataset.diverged = String(diverged);
    div.replaceChildren(plot, legend);
  }

  function verdict(div, c) {
    const diff = `${num(c.mean_diff)} (95% CI ${num(c.t_ci?.[0])} … ${num(c.t_ci?.[1])})`;
    div.dataset.verdict = c.verdict;
    div.replaceChildren(
      el("p", { class: "verdict" }, el("strong", { text: c.verdict }), c.verdict_note ? ` — ${c.verdict_note}` : ""),
      el("p", { text: `A: ${c.a.label}   vs   B: ${c.b.label}` }),
      el("p", { text: `${c.which} ${c.metric}, A − B over ${c.n} paired seeds: ${diff}` }),
      el("p", { text: `Wilcoxon p ${num(c.wilcoxon_p, 3)} · P(A better) ${num(c.p_a_better, 3)} · wins ${c.a_wins}/${c.b_wins}/${c.ties} (A/B/tie)` }),
      el("p", {}, el("a", { href: `/compare?sweep=${c.a.sweep_id}&configs=${c.a.config_hash},${c.b.config_hash}`, text: "their curves" })),
    );
  }

  function budget(div, answer) {
    const groups = answer.groups.filter((g) => g.k.length);
    if (!groups.length) return note(div, "— no finished runs yet");
    const longest = Math.max(...groups.map((g) => g.k.length));
    const x = Array.from({ length: longest }, (_, i) => i + 1);
    const pad = (values) => x.map((_, i) => (i < values.length ? values[i] : null));
    const hue = Configs.styles(groups.map((g) => ({ hash: g.group, config: { "optimizer.name": g.group } })));
    const lines = groups.map((g) => ({
      label: g.group,
      values: pad(g.expected),
      colour: hue.get(g.group).line,
      band: { lo: pad(g.lo), hi: pad(g.hi), fill: hue.get(g.group).band },
    }));
    Charts.lineChart(div, x, lines, { log: answer.metric.includes("loss"), xLabel: "trials k", yLabel: `expected best ${answer.metric}` });
  }

  async function panel(id, draw) {
    const div = $(id);
    try {
      await draw(div);
    } catch (error) {
      note(div, `could not load: ${error.message}`);
    }
  }

  function load(sweepId, sweep, board) {
    const base = `/v1/sweeps/${sweepId}`;
    const two = board.rows.filter((r) => r.n > 0).length >= 2;
    panel("lr-sensitivity", async (div) => divergence(div, await json(`${base}/divergence`)));
    panel("compare", async (div) => {
      if (!two) return note(div, "— needs two configurations with results");
      const [a, b] = board.rows;
      verdict(div, await json(`${base}/compare?a=${a.config_hash}&b=${b.config_hash}`));
    });
    panel("budget", async (div) => {
      if (board.rows.length < 2) return note(div, "— needs two configurations");
      budget(div, await json(`${base}/budget`));
    });
    panel("trials", async (div) => {
      if (sweep.budget === null || sweep.budget === undefined) return note(div, "— (a grid or random sweep has no trials)");
      ParallelCoordinates.draw(div, await json(`${base}/trials`));
    });
  }

  return { load };
})();
