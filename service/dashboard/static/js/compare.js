// Compare: jobs (?jobs=1,2,3: each job's val_loss curve, a handful of small requests) or a sweep's
// configurations (?sweep=ID&configs=H1,H2: their mean curves with min..max bands, from the one
// bulk request; hashes may be prefixes; without configs, the leaderboard's top five).
"use strict";

(() => {
  const { $, el, json, num, label, colours, swatch, ready, whenLoaded } = OL;
  const query = new URLSearchParams(location.search);
  const TOP = 5;

  function cells(...texts) {
    return texts.map((t) => (t instanceof Node ? el("td", {}, t) : el("td", { text: t })));
  }

  function heads(...names) {
    $("compare-table").tHead.rows[0].replaceChildren(...names.map((name) => el("th", { text: name })));
  }

  const jobConfig = (job) => (job.config ? label(job.config) : `${job.optimizer} lr=${num(job.spec.optimizer.lr)}`);

  async function jobs(ids) {
    const answers = await Promise.all(ids.map((id) => Promise.all([json(`/v1/jobs/${id}`), json(`/v1/jobs/${id}/metrics`)])));
    const hue = colours(answers.map(([job]) => ({ hash: String(job.id), config: { "optimizer.name": job.optimizer, id: job.id } })));
    const longest = Math.max(0, ...answers.map(([, m]) => m.rows.length && m.rows.at(-1).epoch));
    const x = Array.from({ length: longest }, (_, i) => i + 1);
    const lines = answers.map(([job, m]) => {
      const byEpoch = new Map(m.rows.map((r) => [r.epoch, r.val_loss ?? r.train_loss]));
      const values = x.map((e) => byEpoch.get(e) ?? null);
      return { key: String(job.id), label: `${job.id} · ${jobConfig(job)}`, values, colour: hue.get(String(job.id)).line };
    });
    const rows = answers.map(([job]) =>
      el("tr", { "data-job-id": job.id }, ...cells(
        el("span", {}, swatch(hue.get(String(job.id)).line), el("a", { href: `/jobs/${job.id}`, text: String(job.id) })),
        jobConfig(job), job.status, num(job.summary.final_val_loss), num(job.summary.best_val_loss),
      )),
    );
    $("compare-title").textContent = `Compare jobs ${ids.join(", ")}`;
    heads("job", "configuration", "status", "final val_loss", "best val_loss");
    return { x, lines, rows };
  }

  async function configs(sweepId, wanted) {
    const [board, bulk] = await Promise.all([
      json(`/v1/sweeps/${sweepId}/leaderboard`),
      json(`/v1/sweeps/${sweepId}/metrics?columns=val_loss`),
    ]);
    const chosen = wanted.length
      ? board.rows.filter((r) => wanted.some((h) => r.config_hash && r.config_hash.startsWith(h)))
      : board.rows.slice(0, TOP);
    const keep = new Set(chosen.map((r) => r.config_hash));
    const hue = colours(chosen.map((r) => ({ hash: r.config_hash, config: r.config })));
    const aggregated = Charts.aggregate(bulk, "val_loss", (hash) => keep.has(hash));
    const lines = aggregated.configs.map((c) => ({
      key: c.hash, label: label(c.config), values: c.mean, colour: hue.get(c.hash).line,
      band: { lo: c.lo, hi: c.hi, fill: hue.get(c.hash).band },
    }));
    const rows = chosen.map((r) =>
      el("tr", { "data-config": r.config_hash }, ...cells(
        el("span", {}, swatch(hue.get(r.config_hash).line), `#${r.rank}`),
        label(r.config), `${r.n}/${r.jobs}`, num(r.mean), `${num(r.min)} … ${num(r.max)}`,
      )),
    );
    $("compare-title").textContent = `Compare configurations of sweep ${sweepId}`;
    heads("rank", "configuration", "runs", "best val_loss (mean over seeds)", "min … max");
    return { x: aggregated.x, lines, rows };
  }

  whenLoaded(async () => {
    const ids = (query.get("jobs") || "").split(",").map((s) => s.trim()).filter((s) => /^\d+$/.test(s));
    const sweep = query.get("sweep");
    const div = $("compare-curves");
    if (!ids.length && !(sweep && /^\d+$/.test(sweep))) {
      div.replaceChildren(el("p", { text: "Nothing to compare yet: name jobs or a sweep in the address (below)." }));
      $("compare-table").hidden = true;
      return ready();
    }
    const wanted = (query.get("configs") || "").split(",").filter((h) => /^[0-9a-f]{4,64}$/.test(h));
    const drawn = ids.length ? await jobs(ids) : await configs(sweep, wanted);
    if (drawn.lines.length) Charts.lineChart(div, drawn.x, drawn.lines, { yLabel: "val_loss" });
    div.dataset.series = String(drawn.lines.length);
    $("compare-table").tBodies[0].replaceChildren(...drawn.rows);
    ready();
  });
})();
