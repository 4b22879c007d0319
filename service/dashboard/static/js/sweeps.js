// The sweeps list: one row per sweep with its status counts. GET /v1/sweeps has no long-poll, so
// the page re-reads it every 2 s, and only while some sweep is not done. The list carries no best
// configuration (that is a leaderboard query per sweep): each row's best is read once after the
// page is ready, and again only when that sweep's counts change.
"use strict";

(() => {
  const { $, el, json, num, label, ready, sleep, whenLoaded } = OL;
  const STATUSES = ["queued", "running", "succeeded", "failed", "diverged", "pruned", "cancelled"];
  const seen = new Map(); // sweep id → the state_token its best was read at

  function row(sweep) {
    const link = el("a", { href: `/sweeps/${sweep.id}`, text: sweep.name || `sweep ${sweep.id}` });
    return el(
      "tr",
      { "data-sweep-id": sweep.id, "data-done": sweep.done ? "1" : "0" },
      el("td", {}, el("a", { href: `/sweeps/${sweep.id}`, text: String(sweep.id) })),
      el("td", {}, link),
      el("td", { text: sweep.strategy }),
      el("td", { class: "n", text: String(sweep.n_jobs) }),
      ...STATUSES.map((s) => el("td", { class: `n count-${s}`, "data-status": s, text: String(sweep.counts[s] || 0) })),
      el("td", { class: "done", text: sweep.done ? "done" : "live" }),
      el("td", { class: "best", text: "…" }),
      el("td", { text: new Date(sweep.created_at).toLocaleString() }),
    );
  }

  function draw(items) {
    const body = $("sweeps").tBodies[0];
    const best = new Map([...body.rows].map((tr) => [tr.dataset.sweepId, tr.querySelector(".best").textContent]));
    body.replaceChildren(...items.map(row));
    for (const tr of body.rows) if (best.has(tr.dataset.sweepId)) tr.querySelector(".best").textContent = best.get(tr.dataset.sweepId);
    $("sweeps-empty").hidden = items.length > 0;
  }

  async function fillBest(items) {
    for (const sweep of items) {
      if (seen.get(sweep.id) === sweep.state_token) continue;
      seen.set(sweep.id, sweep.state_token);
      try {
        const full = await json(`/v1/sweeps/${sweep.id}`);
        const cell = document.querySelector(`tr[data-sweep-id="${sweep.id}"] .best`);
        if (cell) cell.textContent = full.best ? `${num(full.best.mean)} · ${label(full.best.config)}` : "—";
      } catch (_) {
        /* the row keeps its dots; the next change retries */
      }
    }
  }

  whenLoaded(async () => {
    let page = await json("/v1/sweeps?limit=200");
    draw(page.items);
    ready();
    fillBest(page.items);
    while (page.items.some((s) => !s.done)) {
      await sleep(2000);
      try {
        page = await json("/v1/sweeps?limit=200");
        draw(page.items);
        OL.showError("");
        fillBest(page.items);
      } catch (error) {
        OL.showError(`Live updates paused: ${error.message}`);
      }
    }
  });
})();
