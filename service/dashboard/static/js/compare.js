// Compare: jobs (?jobs=1,2,3: each job's val_loss curve, at most MAX_JOBS of them, read a few at a
// time; ids that name no job are listed, the others drawn) or a sweep's configurations
// (?sweep=ID&configs=H1,H2: their mean curves with min..max bands, from the one bulk request;
// hashes may be prefixes; without configs, the leaderboard's top five). A configuration keeps
// the colour and line style of its sweep's page: both are computed over all the sweep's rows.
"use strict";

(() => {
  const { $, el, json, num, swatch, ready, whenLoaded } = OL;
  const query = new URLSearchParams(location.search);
  const TOP = 5;
  const MAX_JOBS = 20;
  const AT_ONCE = 4; // jobs read at once for ?jobs= (two requests each)
  const MAX_ID = 2 ** 31 - 1; // as service/schemas.py: a larger id names no job

  function cells(...texts) {
    return texts.map((t) => (t instanceof Node ? el("td", {}, t) : el("td", { text: t })));
  }

  function numeric(...texts) {
    return texts.map((t) => el("td", { class: "n", text: t }));
  }

  function heads(names, numbers) {
    const th = (name, i) => el("th", { class: i >= names.length - numbers ? "n" : null, text: name });
    $("compare-table").tHead.rows[0].replaceChildren(...names.map(th));
  }

  function note(lines) {
    $("compare-note").replaceChildren(...lines.flatMap((line, i) => (i ? [el("br", {}), line] : [line])));
    $("compare-note").hidden = !lines.length;
  }

  // map(fn) over items, at most `limit` at once, in order; a failure is kept as its error.
  async function bounded(items, limit, fn) {
    const out = new Array(items.length);
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]).catch((error) => error);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return out;
  }

  const jobConfig = (job) => (job.config ? Configs.configLabel(job.config, job.optimizer) : `${job.optimizer} lr=${Configs.py(job.spec.optimizer.lr)}`);

  async function jobs(ids) {
    const fetched = await bounded(ids, AT_ONCE, (id) => Promise.all([json(`/v1/jobs/${id}`), json(`/v1/jobs/${id}/metrics`)]));
    const missing = ids.filter((_, i) => fetched[i] instanceof Error && fetched[i].status === 404);
    const broken = ids.filter((_, i) => fetched[i] instanceof Error && fetched[i].status !== 404);
    const answers = fetched.filter((a) => !(a instanceof Error));
    const styled = answers.map(([job]) => ({ hash: String(job.id), config: { "optimizer.name": job.optimizer, ...Configs.flatten(job.config || {}), job: job.id } }));
    const hue = Configs.styles(styled);
    const longest = Math.max(0, ...answers.map(([, m]) => m.rows.length && m.rows.at(-1).epoch));
    const x = Array.from({ length: longest }, (_, i) => i + 1);
    const lines = answers.map(([job, m]) => {
      const byEpoch = new Map(m.rows.map((r) => [r.epoch, r.val_loss ?? r.train_loss]));
      const { line, dash } = hue.get(String(job.id));
      return { key: String(job.id), label: `${job.id} · ${jobConfig(job)}`, values: x.map((e) => byEpoch.get(e) ?? null), colour: line, dash };
    });
    const rows = answers.map(([job]) =>
      el("tr", { "data-job-id": job.id }, ...cells(
        el("span", {}, swatch(hue.get(String(job.id)).line, hue.get(String(job.id)).dash), el("a", { href: `/jobs/${job.id}`, text: String(job.id) })),
        jobConfig(job), job.status,
      ), ...numeric(num(job.summary.final_val_loss), num(job.summary.best_val_loss))),
    );
    $("compare-title").textContent = `Compare jobs ${answers.map(([job]) => job.id).join(", ")}`;
    heads(["job", "configuration", "status", "final val_loss", "best val_loss"], 2);
    const notes = [];
    if (missing.length) notes.push(`No job ${missing.join(", ")} (not found, or not yours).`);
    if (broken.length) notes.push(`Could not read job ${broken.join(", ")}: ${fetched[ids.indexOf(broken[0])].message}`);
    return { x, lines, rows, notes };
  }

  async function configs(sweepId, wanted) {
    const [sweep, board, bulk] = await Promise.all([
      json(`/v1/sweeps/${sweepId}?best=false`),
      json(`/v1/sweeps/${sweepId}/leaderboard`),
      json(`/v1/sweeps/${sweepId}/metrics?columns=val_loss`),
    ]);
    const labelOf = (config) => Configs.configLabel(config, sweep.template?.optimizer?.name);
    const matches = (h) => /^[0-9a-f]{1,64}$/.test(h) && board.rows.some((r) => r.config_hash && r.config_hash.startsWith(h));
    const unmatched = wanted.filter((h) => !matches(h));
    const chosen = wanted.length
      ? board.rows.filter((r) => wanted.some((h) => matches(h) && r.config_hash.startsWith(h)))
      : board.rows.slice(0, TOP);
    const keep = new Set(chosen.map((r) => r.config_hash));
    const hue = Configs.styles(board.rows.map((r) => ({ hash: r.config_hash, config: r.config }))); // as on the sweep page
    const aggregated = Charts.aggregate(bulk, "val_loss", (hash) => keep.has(hash));
    const lines = aggregated.configs.map((c) => ({
      key: c.hash, label: labelOf(c.config), values: c.mean, colour: hue.get(c.hash).line, dash: hue.get(c.hash).dash,
      band: { lo: c.lo, hi: c.hi, fill: hue.get(c.hash).band },
    }));
    const rows = chosen.map((r) =>
      el("tr", { "data-config": r.config_hash }, ...cells(
        el("span", {}, swatch(hue.get(r.config_hash).line, hue.get(r.config_hash).dash), `#${r.rank}`),
        labelOf(r.config),
      ), ...numeric(`${r.n}/${r.jobs}`, num(r.mean), `${num(r.min)} … ${num(r.max)}`)),
    );
    $("compare-title").textContent = `Compare configurations of sweep ${sweepId}`;
    heads(["rank", "configuration", "runs", "best val_loss (mean over seeds)", "min … max"], 3);
    return { x: aggregated.x, lines, rows, notes: unmatched.map((h) => `no configuration matches ${h}`) };
  }

  whenLoaded(async () => {
    const tokens = [...new Set((query.get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean))];
    const isId = (s) => /^[1-9]\d{0,9}$/.test(s) && Number(s) <= MAX_ID;
    const asked = tokens.filter(isId), ids = asked.slice(0, MAX_JOBS), bad = tokens.filter((s) => !isId(s));
    const sweep = query.get("sweep");
    const div = $("compare-curves");
    if (!ids.length && !(sweep && isId(sweep))) {
      if (bad.length) note([`Not job ids: ${bad.join(", ")}`]);
      div.replaceChildren(el("p", { text: "Nothing to compare yet: name jobs or a sweep in the address (below)." }));
      $("compare-table").hidden = true;
      return ready();
    }
    const wanted = [...new Set((query.get("configs") || "").split(",").map((h) => h.trim()).filter(Boolean))];
    const drawn = ids.length ? await jobs(ids) : await configs(sweep, wanted);
    if (bad.length && ids.length) drawn.notes.unshift(`Not job ids: ${bad.join(", ")}`);
    if (asked.length > MAX_JOBS) drawn.notes.unshift(`Showing the first ${MAX_JOBS} of ${asked.length} jobs: compare at most ${MAX_JOBS} at once.`);
    note(drawn.notes);
    if (drawn.lines.length) Charts.lineChart(div, drawn.x, drawn.lines, { yLabel: "val_loss" });
    else div.replaceChildren(el("p", { class: "muted", text: "Nothing to draw." }));
    div.dataset.series = String(drawn.lines.length);
    $("compare-table").tBodies[0].replaceChildren(...drawn.rows);
    ready();
  });
})();
