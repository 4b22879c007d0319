// A job's page: status, facts, spec, and its train/val loss curves. While it runs, one long-poll
// waits for its state to change (an epoch, a status, a cancel flag); then only the epochs after
// the last one drawn are read (?since_epoch=N) and appended, so the curve grows without re-reading
// what it already shows.
"use strict";

(() => {
  const { $, el, json, post, num, ready, follow, whenLoaded, showError } = OL;
  const id = document.body.dataset.jobId;
  const FINAL = ["succeeded", "failed", "diverged", "pruned", "cancelled"];
  const state = { job: null, epochs: [], train: [], val: [], chart: null };

  function fact(name, value) {
    return [el("dt", { text: name }), el("dd", {}, value)];
  }

  function link(href, text) {
    return el("a", { href, text });
  }

  // The spec as indented JSON, less its null values (defaults the server left unset: noise), and
  // with short lists of numbers or strings on one line ("betas": [0.9, 0.999]).
  function pretty(value, indent = "") {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    const list = Array.isArray(value);
    if (list && value.every((v) => v === null || typeof v !== "object")) return `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
    const inner = `${indent}  `;
    const entries = list
      ? value.map((v) => inner + pretty(v, inner))
      : Object.entries(value).filter(([, v]) => v !== null).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pretty(v, inner)}`);
    const [open, close] = list ? ["[", "]"] : ["{", "}"];
    return entries.length ? `${open}\n${entries.join(",\n")}\n${indent}${close}` : open + close;
  }

  function drawJob(job) {
    state.job = job;
    $("job-name").textContent = job.name ? `${job.name} (job ${job.id})` : `Job ${job.id}`;
    document.title = `${$("job-name").textContent} · optimlab`;
    const status = $("job-status");
    status.textContent = job.status;
    status.dataset.status = job.status;
    $("job-cancelling").hidden = !(job.cancel_requested && !FINAL.includes(job.status));
    $("cancel-job").setAttribute("aria-disabled", FINAL.includes(job.status) ? "true" : "false");
    const s = job.summary;
    $("job-facts").replaceChildren(
      ...fact("optimizer", job.optimizer),
      ...fact("sweep", job.sweep_id ? link(`/sweeps/${job.sweep_id}`, `sweep ${job.sweep_id}`) : "—"),
      ...fact("configuration", job.config ? Configs.configLabel(job.config, job.optimizer) : "—"),
      ...fact("epochs", `${state.epochs.length} / ${s.epochs_total ?? "?"}`),
      ...fact("best val_loss", `${num(s.best_val_loss)}${s.best_epoch ? ` (epoch ${s.best_epoch})` : ""}`),
      ...fact("attempt", String(job.attempt)),
      ...fact("worker", job.worker || "—"),
      ...fact("device", job.device || "—"),
      ...fact("queue", job.queue),
      ...fact("cached from", job.cached_from ? link(`/jobs/${job.cached_from}`, `job ${job.cached_from}`) : "—"),
      ...fact("run time", job.run_seconds !== null ? `${num(job.run_seconds, 3)} s` : "—"),
    );
    $("job-error").hidden = !job.error;
    $("job-error").textContent = job.error || "";
    const spec = pretty(job.spec);
    if ($("spec").textContent !== spec) $("spec").textContent = spec;
  }

  function addRows(rows) {
    for (const row of rows) {
      if (state.epochs.length && row.epoch <= state.epochs.at(-1)) continue; // already drawn
      state.epochs.push(row.epoch);
      state.train.push(row.train_loss);
      state.val.push(row.val_loss);
    }
  }

  function drawCurve() {
    const div = $("job-curve");
    const data = [state.epochs, state.train, state.val].map((values, i) => (i ? values.map((v) => (v > 0 ? v : null)) : values));
    if (state.chart) state.chart.setData(data);
    else if (state.epochs.length) {
      state.chart = Charts.lineChart(div, state.epochs, [
        { label: "train_loss", values: state.train, colour: "hsl(210 70% 45%)" },
        { label: "val_loss", values: state.val, colour: "hsl(28 90% 45%)", dash: [6, 3] },
      ]);
    } else div.replaceChildren(el("p", { class: "muted", text: "No epoch recorded yet." }));
    div.dataset.points = String(state.epochs.length);
  }

  async function newEpochs() {
    const since = state.epochs.length ? state.epochs.at(-1) : 0;
    const answer = await json(`/v1/jobs/${id}/metrics?since_epoch=${since}`);
    addRows(answer.rows);
    drawCurve();
  }

  async function cancel() {
    if (state.job && FINAL.includes(state.job.status)) return; // finished: nothing to stop
    try {
      drawJob(await post(`/v1/jobs/${id}/cancel`));
      showError("");
    } catch (error) {
      showError(`Cancel failed: ${error.message}`);
    }
  }

  whenLoaded(async () => {
    const [job, metrics] = await Promise.all([json(`/v1/jobs/${id}`), json(`/v1/jobs/${id}/metrics`)]);
    addRows(metrics.rows);
    drawJob(job);
    drawCurve();
    $("cancel-job").addEventListener("click", cancel);
    ready();
    const done = (j) => FINAL.includes(j.status);
    if (!done(job)) {
      await follow(`/v1/jobs/${id}`, job.state_token, async (j) => {
        await newEpochs();
        drawJob(j);
      }, done);
    }
  });
})();
