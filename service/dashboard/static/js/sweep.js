// A sweep's page. First paint: the sweep, its leaderboard and its bulk curves, requested together
// (one request for every job's epochs, never one per job), drawn, then "ready". The verdict panels
// load after that (sweep_panels.js). While the sweep runs, one long-poll waits for its counts to
// change, and only then are the leaderboard and the curves read again; a finished sweep's curves
// carry an ETag, so reading them again costs a 304.
"use strict";

(() => {
  const { $, el, json, request, post, num, swatch, ready, follow, whenLoaded, showError } = OL;
  const id = document.body.dataset.sweepId;
  const STATUSES = ["queued", "running", "succeeded", "failed", "diverged", "pruned", "cancelled"];
  const METRICS_URL = `/v1/sweeps/${id}/metrics?columns=val_loss,val_accuracy`;
  const REFRESH_MS = 2000;
  const state = { sweep: null, board: null, bulk: null, etag: null, styles: new Map(), chart: null };

  // The canonical label (configs.js), named by the base spec's optimizer when the grid keeps it.
  const labelOf = (config) => Configs.configLabel(config, state.sweep?.template?.optimizer?.name);

  async function metrics() {
    const headers = state.etag ? { "If-None-Match": state.etag } : {};
    const response = await request(METRICS_URL, { headers });
    if (response.status === 304) return state.bulk;
    if (!response.ok) throw new Error(`curves: ${response.status} ${response.statusText}`);
    state.etag = response.headers.get("ETag");
    return response.json();
  }

  function drawStatus(sweep) {
    state.sweep = sweep;
    $("sweep-name").textContent = sweep.name ? `${sweep.name} (sweep ${sweep.id})` : `Sweep ${sweep.id}`;
    document.title = `${$("sweep-name").textContent} · optimlab`;
    const status = $("sweep-status");
    const counts = STATUSES.map((s) => `${s} ${sweep.counts[s] || 0}`).join(" · ");
    const budget = sweep.budget ? ` · trials ${sweep.trials}/${sweep.budget}` : "";
    status.textContent = `${sweep.strategy} · ${sweep.n_jobs} jobs · ${counts}${budget} · ${sweep.done ? "done" : "live"}`;
    for (const s of STATUSES) status.dataset[s] = String(sweep.counts[s] || 0);
    status.dataset.done = sweep.done ? "1" : "0";
    $("cancel-sweep").setAttribute("aria-disabled", sweep.done ? "true" : "false");
  }

  function leaderboardRow(row) {
    const style = state.styles.get(row.config_hash);
    const ci = row.mean !== null && row.ci95_high !== null ? ` ± ${num(row.ci95_high - row.mean, 2)}` : "";
    const link = el("a", { href: `/compare?sweep=${id}&configs=${row.config_hash}`, text: labelOf(row.config) });
    return el(
      "tr",
      { "data-config": row.config_hash },
      el("td", { class: "n", text: String(row.rank) }),
      el("td", {}, style ? swatch(style.line, style.dash) : null, link),
      el("td", { class: "n", text: `${row.n}/${row.jobs}` }),
      el("td", { class: "n", text: `${num(row.mean)}${ci}` }),
      el("td", { class: "n", text: num(row.min) }),
      el("td", { class: "n", text: num(row.max) }),
      el("td", { class: "n", text: String(row.diverged) }),
      el("td", { class: "n", text: String(row.pruned) }),
      el("td", { class: "n", text: String(row.failed) }),
      el("td", { class: "n", text: String(row.pending) }),
    );
  }

  function drawLeaderboard(board) {
    state.board = board;
    state.styles = Configs.styles(board.rows.map((r) => ({ hash: r.config_hash, config: r.config })));
    $("leaderboard").tBodies[0].replaceChildren(...board.rows.map(leaderboardRow));
  }

  // The leaderboard and the curves name the same configurations: pointing at a row lights its
  // line and band (the others dim), pointing at a line marks its row.
  function markRow(hash) {
    for (const tr of $("leaderboard").tBodies[0].rows) tr.classList.toggle("focused", tr.dataset.config === hash);
  }

  function linkLeaderboard() {
    const body = $("leaderboard").tBodies[0];
    body.addEventListener("mouseover", (event) => {
      const row = event.target.closest("tr[data-config]");
      if (row && state.chart) state.chart.highlight(row.dataset.config);
    });
    body.addEventListener("mouseleave", () => state.chart && state.chart.highlight(null));
  }

  function drawCurves() {
    const metric = $("curve-metric").value;
    const div = $("curves");
    const aggregated = Charts.aggregate(state.bulk, metric);
    state.chart = null;
    if (!aggregated.configs.length) {
      div.replaceChildren(el("p", { class: "muted", text: `No ${metric} recorded yet.` }));
      div.dataset.bands = "0";
      div.dataset.points = "0";
      return;
    }
    state.chart = Charts.configCurves(div, aggregated, state.styles, metric, { onFocus: markRow, labelOf });
  }

  async function cancel() {
    if (state.sweep && state.sweep.done) return; // nothing left to stop
    try {
      drawStatus(await post(`/v1/sweeps/${id}/cancel`));
      showError("");
    } catch (error) {
      showError(`Cancel failed: ${error.message}`);
    }
  }

  // A big running sweep changes with every job that ends: redraw at most every REFRESH_MS, so
  // the page does not re-read every curve many times a second (the next poll sees any change).
  async function refresh(sweep) {
    const started = performance.now();
    drawStatus(sweep);
    const [board, bulk] = await Promise.all([json(`/v1/sweeps/${id}/leaderboard`), metrics()]);
    drawLeaderboard(board);
    if (bulk !== state.bulk) {
      state.bulk = bulk;
      drawCurves();
    }
    if (sweep.done) SweepPanels.load(id, sweep, board);
    else await OL.sleep(Math.max(0, REFRESH_MS - (performance.now() - started)));
  }

  whenLoaded(async () => {
    const [sweep, board, bulk] = await Promise.all([
      json(`/v1/sweeps/${id}?best=false`), // the leaderboard beside it has the best
      json(`/v1/sweeps/${id}/leaderboard`),
      metrics(),
    ]);
    drawStatus(sweep);
    drawLeaderboard(board);
    state.bulk = bulk;
    drawCurves();
    $("curve-metric").addEventListener("change", drawCurves);
    $("cancel-sweep").addEventListener("click", cancel);
    linkLeaderboard();
    ready();
    SweepPanels.load(id, sweep, board);
    if (!sweep.done) await follow(`/v1/sweeps/${id}?best=false`, sweep.state_token, refresh, (s) => s.done);
  });
})();
