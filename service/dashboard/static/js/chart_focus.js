// Which line a chart's reader means: hovering the plot names the line nearest the cursor in a
// small tooltip and dims the others; highlight(key) does the same from outside (a leaderboard
// row). Only series alphas change and uPlot redraws from its cached paths, so lighting one of 50
// configurations (150 series with the band edges) costs one repaint, and only when it changes.
"use strict";

const ChartFocus = (() => {
  const DIM = 0.15;
  const GAP = 12; // pixels between the cursor and the tooltip

  // The group whose line passes closest, in pixels, to the cursor at the hovered x; -1 for none.
  function nearest(u, groups) {
    const { idx, top } = u.cursor;
    if (idx === null || idx === undefined || !(top >= 0)) return -1;
    let best = -1, distance = Infinity;
    groups.forEach((g, i) => {
      const value = u.data[g.mean][idx];
      if (value === null || value === undefined) return;
      const d = Math.abs(u.valToPos(value, "y") - top);
      if (d < distance) [best, distance] = [i, d];
    });
    return best;
  }

  function light(u, groups, lit) {
    groups.forEach((g, i) => {
      const alpha = lit < 0 || i === lit ? 1 : DIM;
      for (const s of g.series) u.series[s].alpha = alpha;
    });
    u.redraw(false); // alphas only: the paths stand
  }

  function tipText(u, g) {
    const idx = u.cursor.idx;
    const at = (s) => OL.num(u.data[s][idx]);
    const range = g.series.length === 3 ? ` (${at(g.series[2])} … ${at(g.series[1])})` : "";
    return `${g.label}: ${at(g.mean)}${range} · ${u.series[0].label} ${u.data[0][idx]}`;
  }

  function placeTip(u, tip, g) {
    tip.replaceChildren(OL.swatch(g.colour, g.dash), tipText(u, g));
    tip.hidden = false;
    const y = u.valToPos(u.data[g.mean][u.cursor.idx], "y");
    const right = u.cursor.left + GAP + tip.offsetWidth > u.over.clientWidth;
    tip.style.left = `${right ? u.cursor.left - GAP - tip.offsetWidth : u.cursor.left + GAP}px`;
    tip.style.top = `${Math.max(0, y - tip.offsetHeight - 4)}px`;
  }

  // A uPlot plugin over `groups` ({key, label, colour, mean, series}); its highlight(key or null)
  // lights one group from outside, and onFocus(key or null) hears what the cursor points at.
  function plugin(groups, onFocus) {
    let chart = null, lit = -1, tip = null;
    const focus = (i) => {
      if (i === lit || !chart) return;
      lit = i;
      if (groups.length > 1) light(chart, groups, i);
    };
    const hover = (u) => {
      const i = nearest(u, groups);
      if (i !== lit && onFocus) onFocus(i < 0 ? null : groups[i].key);
      focus(i);
      if (i < 0) tip.hidden = true;
      else placeTip(u, tip, groups[i]);
    };
    const init = (u) => {
      chart = u;
      tip = OL.el("div", { class: "chart-tip", hidden: true });
      u.over.append(tip);
    };
    const highlight = (key) => focus(key === null ? -1 : groups.findIndex((g) => g.key === key));
    return { hooks: { init: [init], setCursor: [hover] }, highlight };
  }

  return { plugin };
})();
