// A configuration's label and look, as the Python side has them: label(flatten(config)) of
// service/labels.py (the client's frames, exports and plots, and the analysis arms say the same
// words), and service/plots_curves.py's style_keys and colours: one hue per optimizer, its
// settings as shades of it (lighter to darker in natural order), one line style per schedule.
// Both depend only on the set of configurations drawn, so every page colours alike.
"use strict";

const Configs = (() => {
  // {"optimizer": {"name": "sgd", "lr": 0.1}} → {"optimizer.name": "sgd", "optimizer.lr": 0.1}.
  function flatten(config, prefix = "") {
    const flat = {};
    for (const [key, value] of Object.entries(config || {})) {
      const path = `${prefix}${key}`;
      const mapping = value !== null && typeof value === "object" && !Array.isArray(value);
      if (mapping && Object.keys(value).length) Object.assign(flat, flatten(value, `${path}.`));
      else flat[path] = value;
    }
    return flat;
  }

  // A JSON value as Python's str() spells it: 1e-05, True, None, [0.9, 0.999]. (JSON cannot tell
  // 1.0 from 1: a whole float reads as Python's int would.)
  function py(value, quoted = false) {
    if (value === null || value === undefined) return "None";
    if (typeof value === "boolean") return value ? "True" : "False";
    if (typeof value === "string") return quoted ? `'${value}'` : value;
    if (Array.isArray(value)) return `[${value.map((v) => py(v, true)).join(", ")}]`;
    if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `'${k}': ${py(v, true)}`).join(", ")}}`;
    if (!Number.isFinite(value) || (Number.isInteger(value) && Math.abs(value) < 1e16)) return String(value);
    const [digits, exp] = value.toExponential().split("e");
    const e = Number(exp);
    if (e >= -4 && e < 16) return String(value);
    return `${digits}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }

  // service/labels.py's label(flat): grouped by the spec's top-level key, each group's name first.
  function label(flat) {
    const groups = new Map();
    for (const [path, value] of Object.entries(flat || {})) {
      const dot = path.indexOf(".");
      const top = dot < 0 ? path : path.slice(0, dot);
      const rest = dot < 0 ? "" : path.slice(dot + 1);
      if (!groups.has(top)) groups.set(top, []);
      const parts = groups.get(top);
      const leaf = rest ? rest.split(".").pop() : top;
      if (value === null || value === undefined) parts.push(`${top}=none`);
      else if (leaf === "name" && rest) parts.unshift(py(value));
      else parts.push(`${leaf}=${py(value)}`);
    }
    return groups.size ? [...groups.values()].map((p) => p.join(" ")).join(" | ") : "base";
  }

  // service/labels.py's config_label: named by `optimizer` when the configuration does not vary it.
  function configLabel(config, optimizer) {
    let flat = flatten(config);
    if (optimizer && !("optimizer.name" in flat)) flat = { "optimizer.name": optimizer, ...flat };
    return label(flat);
  }

  const SCHEDULE_KEYS = ["scheduler", "schedule", "warmup"];

  // plots_curves.style_keys: [optimizer, its settings, schedule]; without optimizer.name, the
  // non-schedule part is the optimizer (one hue per configuration, as when only lr varies).
  function styleKeys(flat, fallback) {
    const schedule = [], settings = [];
    let name = null;
    for (const [path, value] of Object.entries(flat)) {
      if (SCHEDULE_KEYS.includes(path.split(".")[0])) schedule.push(`${path}=${py(value)}`);
      else if (path === "optimizer.name") name = py(value);
      else settings.push(`${path.split(".").pop()}=${py(value)}`);
    }
    if (name === null) return [settings.join(" ") || fallback, "", schedule.join(" ")];
    return [name, settings.join(" "), schedule.join(" ")];
  }

  // plots_curves._natural: lr=0.01 before lr=0.1 before lr=1.
  function natural(a, b) {
    const split = (t) => t.replace(/=/g, " ").split(/\s+/).filter(Boolean);
    const [x, y] = [split(a), split(b)];
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const [p, q] = [Number(x[i]), Number(y[i])];
      const [pn, qn] = [x[i] !== "" && !Number.isNaN(p), y[i] !== "" && !Number.isNaN(q)];
      if (pn !== qn) return pn ? -1 : 1;
      if (pn && p !== q) return p - q;
      if (!pn && x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return x.length - y.length;
  }

  const byCode = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // Python's sorted() order for text
  const unscheduled = (s) => !s || s.endsWith("=None");
  // tab:blue, orange, green, red, purple, gray, olive, pink, cyan, brown as [hue, saturation].
  const HUES = [[205, 70], [28, 90], [120, 55], [0, 70], [275, 45], [0, 0], [60, 60], [320, 60], [185, 70], [20, 45]];
  const DASHES = [null, [8, 4], [2, 3], [8, 3, 2, 3], [12, 3, 2, 3, 2, 3], [1, 5]]; // -, --, :, -., ...

  // [{hash, config}] → Map hash → {line, band, dash}: hue per optimizer, shade per setting,
  // dash per schedule (none: solid), all from the sorted set of configurations.
  function styles(configs) {
    const keyOf = (flat) => {
      const [optimizer, settings, schedule] = styleKeys(flat, label(flat));
      return [optimizer, settings, unscheduled(schedule) ? "" : schedule]; // no scheduler key or null: solid alike
    };
    const keys = new Map(configs.map((c) => [c.hash, keyOf(flatten(c.config))]));
    const all = [...keys.values()];
    const optimizers = [...new Set(all.map((k) => k[0]))].sort(byCode);
    const schedules = [...new Set(all.map((k) => k[2]))].sort(byCode); // "" (none) first: solid
    const many = optimizers.length > HUES.length;
    const colour = new Map();
    optimizers.forEach((optimizer, i) => {
      const settings = [...new Set(all.filter((k) => k[0] === optimizer).map((k) => k[1]))].sort(natural);
      const [hue, sat] = many ? [(360 * i) / optimizers.length, 65] : HUES[i % HUES.length];
      settings.forEach((s, j) => {
        const light = settings.length === 1 || many ? 45 : 70 - (38 * j) / (settings.length - 1);
        colour.set(`${optimizer}\u0000${s}`, [hue, sat, light]);
      });
    });
    const out = new Map();
    for (const [hash, [optimizer, settings, schedule]] of keys) {
      const [hue, sat, light] = colour.get(`${optimizer}\u0000${settings}`);
      const dash = DASHES[schedules.indexOf(schedule) % DASHES.length];
      out.set(hash, { line: `hsl(${hue} ${sat}% ${light}%)`, band: `hsl(${hue} ${sat}% ${light}% / 0.14)`, dash });
    }
    return out;
  }

  return { flatten, py, label, configLabel, styleKeys, styles };
})();
