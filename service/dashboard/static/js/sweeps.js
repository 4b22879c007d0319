// The sweeps list: one row per sweep with its status counts. GET /v1/sweeps has no long-poll, so
// the page re-reads it every 2 s, and only while some sweep is not done. The list carries no best
// configuration (that is a leaderboard query per sweep): a row's best is read when the row is on
// screen (an IntersectionObserver says which are), once per state of its sweep (its state_token),
// one request at a time; a row scrolled to later is read then.
"use strict";

(() => {
  const { $, el, json, num, ready, sleep, whenLoaded } = OL;
  const STATUSES = ["queued", "running", "succeeded", "failed", "diverged", "pruned", "cancelled"];
  const seen = new Map(); // sweep id → the state_token its best was read at
  const latest = new Map(); // sweep id → the sweep as the list last said
  const visible = new Set(); // sweep ids whose rows are on screen
  let reading = false;

  function row(sweep) {
    const link = el("a", { href: `/sweeps/${sweep.id}`, text: sweep.name || `sweep ${sweep.id}` });
    return el(
      "tr",
      { "data-sweep-id": sweep.id, "data-done": sweep.done ? "1" : "0" },
      el("td", { class: "n" }, el("a", { href: `/sweeps/${sweep.id}`, text: String(sweep.id) })),
      el("td", {}, link),
      el("td", { text: sweep.strategy }),
      el("td", { class: "n", text: String(sweep.n_jobs) }),
      ...STATUSES.map((s) => el("td", { class: `n count-${s}`, "data-status": s, text: String(sweep.counts[s] || 0) })),
      el("td", { class: "done", text: sweep.done ? "done" : "live" }),
      el("td", { class: "best", text: "…" }),
      el("td", { text: new Date(sweep.created_at).toLocaleString() }),
    );
  }

  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const sweepId = entry.target.dataset.sweepId;
      if (entry.isIntersecting) visible.add(sweepId);
      else visible.delete(sweepId);
    }
    fillBest();
  });

  function draw(items) {
    const body = $("sweeps").tBodies[0];
    const best = new Map([...body.rows].map((tr) => [tr.dataset.sweepId, tr.querySelector(".best").textContent]));
    observer.disconnect();
    visible.clear(); // observing the new rows reports the visible ones again
    latest.clear();
    for (const sweep of items) latest.set(String(sweep.id), sweep);
    body.replaceChildren(...items.map(row));
    for (const tr of body.rows) {
      if (best.has(tr.dataset.sweepId)) tr.querySelector(".best").textContent = best.get(tr.dataset.sweepId);
      observer.observe(tr);
    }
    $("sweeps-empty").hidden = items.length > 0;
  }

  function bestText(sweep) {
    if (!sweep.best) return "—";
    return `${num(sweep.best.mean)} · ${Configs.configLabel(sweep.best.config, sweep.template?.optimizer?.name)}`;
  }

  // Visible rows whose sweep changed since its best was read; one request at a time.
  async function fillBest() {
    if (reading) return;
    reading = true;
    try {
      for (;;) {
        const next = [...visible].map((sweepId) => latest.get(sweepId)).find((s) => s && seen.get(s.id) !== s.state_token);
        if (!next) return;
        seen.set(next.id, next.state_token);
        try {
          const full = await json(`/v1/sweeps/${next.id}`);
          const cell = document.querySelector(`tr[data-sweep-id="${next.id}"] .best`);
          if (cell) cell.textContent = bestText(full);
        } catch (_) {
          /* the row keeps its dots; the next change retries */
        }
      }
    } finally {
      reading = false;
    }
  }

  whenLoaded(async () => {
    let page = await json("/v1/sweeps?limit=200");
    draw(page.items);
    ready();
    while (page.items.some((s) => !s.done)) {
      await sleep(2000);
      try {
        page = await json("/v1/sweeps?limit=200");
        draw(page.items);
        OL.showError("");
      } catch (error) {
        OL.showError(`Live updates paused: ${error.message}`);
      }
    }
  });
})();
