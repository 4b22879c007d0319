// The catalog: one row per model, dataset, loss, optimizer and scheduler, with whether it can
// train in a pack and whether this server can run it (and why not), its parameters' JSON schema
// folded away in a <details>.
"use strict";

(() => {
  const { $, el, json, ready, whenLoaded } = OL;
  const KINDS = { models: "model", datasets: "dataset", losses: "loss", optimizers: "optimizer", schedulers: "scheduler" };

  function flag(value) {
    return value === undefined || value === null ? "—" : value ? "yes" : "no";
  }

  function row(kind, entry) {
    const available = entry.available === false && entry.reason ? `no: ${entry.reason}` : flag(entry.available);
    const schema = el(
      "details",
      {},
      el("summary", { text: entry.description || "schema" }),
      el("pre", { text: JSON.stringify(entry.params_schema ?? {}, null, 2) }),
    );
    return el(
      "tr",
      { "data-kind": kind, "data-name": entry.name, "data-available": entry.available === false ? "0" : "1" },
      el("td", { text: kind }),
      el("td", {}, el("code", { text: entry.name })),
      el("td", { text: flag(entry.packable) }),
      el("td", { text: available }),
      el("td", {}, schema),
    );
  }

  whenLoaded(async () => {
    const catalog = await json("/v1/catalog");
    const rows = [];
    for (const [key, kind] of Object.entries(KINDS)) for (const entry of catalog[key] || []) rows.push(row(kind, entry));
    $("catalog").tBodies[0].replaceChildren(...rows);
    ready();
  });
})();
