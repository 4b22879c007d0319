// What every page shares: requests to /v1 with the session's key (and the key form a 401 opens),
// the error line, the ready signal the browser tests and timings wait for, long-polling, small
// DOM and number helpers (labels and colours: configs.js). A classic script (not an ES module) so
// that every file is loaded through a versioned, long-cached URL: module imports would not be.
"use strict";

const OL = (() => {
  const KEY = "optimlab.key";
  let waiting = []; // requests paused on a 401 until a key is saved

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function showError(message) {
    const line = $("error");
    line.textContent = message || "";
    line.hidden = !message;
  }

  // A 401 shows the key form; the request is retried once a key is saved (a refused key: again).
  function askForKey() {
    const form = $("key-form");
    form.hidden = false;
    $("api-key").focus();
    return new Promise((resolve) => waiting.push(resolve));
  }

  function setUpKeyForm() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key); // this tab's session only; never in a URL
      $("key-form").hidden = true;
      showError("");
      const resume = waiting;
      waiting = [];
      resume.forEach((go) => go());
    });
  }

  async function request(path, options = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(options.headers || {});
      const key = sessionStorage.getItem(KEY);
      if (key) headers.set("Authorization", `Bearer ${key}`);
      const response = await fetch(path, { ...options, headers });
      if (response.status !== 401) return response;
      if (key) showError(attempt ? "That key was refused: enter another." : "The server needs an API key.");
      await askForKey();
    }
  }

  async function fail(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    } catch (_) {
      /* not JSON: the status text says enough */
    }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }

  async function json(path, options) {
    const response = await request(path, options);
    if (!response.ok) await fail(response);
    return response.json();
  }

  function post(path) {
    return json(path, { method: "POST" });
  }

  function ready() {
    if (document.body.dataset.ready === "1") return;
    document.body.dataset.ready = "1";
    performance.mark("optimlab-ready");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Long-poll a job or sweep (GET path?wait_s=25&since=TOKEN): calls onChange(body) whenever its
  // state_token moves, until isDone(body). A failed poll is shown and retried after 2 s.
  async function follow(path, token, onChange, isDone) {
    for (;;) {
      try {
        const query = `wait_s=25&since=${encodeURIComponent(token)}`;
        const body = await json(path.includes("?") ? `${path}&${query}` : `${path}?${query}`);
        if (body.state_token !== token) {
          token = body.state_token;
          await onChange(body);
        }
        if (isDone(body)) return;
      } catch (error) {
        showError(`Live updates paused: ${error.message}`);
        await sleep(2000);
      }
    }
  }

  function num(value, digits = 4) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    if (value === 0 || (Math.abs(value) >= 1e-3 && Math.abs(value) < 1e5)) return String(+value.toPrecision(digits));
    return value.toExponential(digits - 1);
  }

  // A legend's mark: a box, or a dashed stroke for a line drawn dashed (a schedule).
  function swatch(colour, dash) {
    const box = el("span", { class: dash ? "swatch dashed" : "swatch" });
    if (dash) box.style.borderTopColor = colour;
    else box.style.background = colour;
    return box;
  }

  // A page that could not load says so where it said "loading…", and its actions stand down.
  function failed(error) {
    showError(error.message);
    for (const node of document.querySelectorAll(".loading")) {
      node.textContent = `not loaded: ${error.message}`;
      node.classList.replace("loading", "load-failed");
    }
    for (const button of document.querySelectorAll("main button")) {
      button.disabled = true;
      button.setAttribute("aria-disabled", "true");
    }
    document.body.dataset.failed = "1"; // never ready: a test waiting for it can stop here
  }

  function whenLoaded(start) {
    setUpKeyForm();
    start().catch(failed);
  }

  return { $, el, showError, request, json, post, ready, sleep, follow, num, swatch, whenLoaded };
})();
