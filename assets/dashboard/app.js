// The tollgate dashboard: polls admin/dashboard/figures and admin/dashboard/state (relative
// URLs, so it works under a reverse proxy's prefix) and renders them; changes go to the admin
// API with the session's CSRF token. No build step, no dependencies but the vendored uPlot.
"use strict";

window.dashboardErrors = [];
window.addEventListener("error", (e) => window.dashboardErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.dashboardErrors.push(String(e.reason)));

const CSRF = document.querySelector('meta[name="tollgate-csrf"]').content;
const $ = (id) => document.getElementById(id);
const charts = {};
let range = sessionStorage.getItem("tollgate-range") || "15m";
let timer = null;

// ---- numbers with units ---------------------------------------------------------------

const nf = new Intl.NumberFormat("en-US");
function count(n) {
  return n == null ? "–" : nf.format(n);
}
function ms(x) {
  if (x == null || Number.isNaN(x)) return "–";
  return x >= 1000 ? (x / 1000).toFixed(2) + " s" : x.toFixed(x < 10 ? 2 : 0) + " ms";
}
function rate(x, unit) {
  if (x == null) return "–";
  return (x >= 100 ? x.toFixed(0) : x.toFixed(2)) + " " + unit + "/s";
}
function usd(s) {
  if (s == null) return "–";
  const v = Number(s);
  return "$" + (v !== 0 && Math.abs(v) < 0.01 ? v.toPrecision(3) : v.toFixed(2));
}
function pct(x) {
  return x == null ? "–" : (x * 100).toFixed(1) + " %";
}
function p(q) {
  return q ? ms(q.p50) + " / " + ms(q.p95) + " / " + ms(q.p99) : "–";
}

// ---- DOM helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}

/// A table with a caption and column headers; `empty` is said when there are no rows.
function table(id, caption, columns, rows, empty) {
  const box = $(id);
  const t = el("table", {}, el("caption", { text: caption }));
  const head = el("tr", {});
  for (const c of columns) head.append(el("th", { scope: "col", class: c.num ? "num" : null, text: c.label }));
  t.append(el("thead", {}, head));
  const body = el("tbody", {});
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: String(columns.length), class: "empty-row", text: empty })));
  }
  for (const r of rows) {
    const tr = el("tr", {});
    columns.forEach((c, i) => {
      const v = c.get(r);
      const cell = el(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, class: c.num ? "num" : null });
      cell.append(v instanceof Node ? v : String(v));
      tr.append(cell);
    });
    body.append(tr);
  }
  t.append(body);
  box.replaceChildren(t);
}

function tiles(id, items) {
  $(id).replaceChildren(
    ...items.map(([label, value, tid]) => el("div", { class: "tile" }, el("dt", { text: label }), el("dd", { id: tid, text: value })))
  );
}

function progress(done, total, label) {
  const max = Math.max(total, 1);
  return el("span", { class: "progress" },
    el("progress", { max: String(max), value: String(Math.min(done, max)), "aria-label": label }),
    " " + count(done) + " of " + count(total));
}

// ---- charts -------------------------------------------------------------------------------

// Lines differ by dash pattern and by their legend's name, not by colour alone.
const STYLES = [
  { stroke: "#1f4e9c", dash: [] },
  { stroke: "#a4330c", dash: [6, 4] },
  { stroke: "#2d6a2d", dash: [2, 3] },
];

function chart(id, names, unit, data) {
  const box = $(id);
  const width = Math.max(280, box.clientWidth || 480);
  if (!charts[id] || charts[id].width !== width) {
    if (charts[id]) charts[id].destroy();
    const series = [{ label: "time" }].concat(names.map((n, i) => ({
      label: n,
      stroke: STYLES[i % 3].stroke,
      dash: STYLES[i % 3].dash,
      width: 2,
      spanGaps: false,
      points: { show: true, size: 4 },
      value: (u, v) => (v == null ? "–" : (unit === "ms" ? ms(v) : rate(v, unit))),
    })));
    charts[id] = new uPlot({
      width, height: 200, series,
      axes: [{ stroke: "#333" }, { stroke: "#333", size: 60, values: (u, ticks) => ticks.map((v) => (unit === "ms" ? ms(v) : String(v))) }],
      scales: { x: { time: true } },
      legend: { live: true },
    }, data, box);
  } else {
    charts[id].setData(data);
  }
}

// ---- the figures ----------------------------------------------------------------------

function renderFigures(f) {
  if (!f.ledger) {
    $("scope").textContent = "(the ledger is off: [ledger] enabled = false)";
    return;
  }
  const t = f.totals;
  $("scope").textContent = f.replica ? "(this replica, " + f.replica + ")" : "";
  const secs = (f.to_ms - f.from_ms) / 1000;
  const errRate = t.requests ? t.error_rate : null;
  tiles("tiles", [
    ["Requests", count(t.requests), "total-requests"],
    ["Requests per second", rate(t.requests / secs, "req"), null],
    ["Errors (5xx)", count(t.errors) + " (" + pct(errRate) + ")", "total-errors"],
    ["Client errors (4xx)", count(t.client_errors), null],
    ["Tokens, prompt / completion", count(t.prompt_tokens) + " / " + count(t.completion_tokens), null],
    ["Cached prompt tokens", count(t.cached_tokens), null],
    ["Total time p50 / p95 / p99", p(t.latency_ms), null],
    ["Time to first token p50 / p95 / p99", p(t.ttft_ms), null],
  ]);
  $("empty").hidden = t.requests > 0;
  const s = f.series;
  chart("c-requests", ["requests/s", "errors/s"], "req", [s.t, s.requests_per_s, s.errors_per_s]);
  chart("c-tokens", ["prompt", "completion", "cached"], "tok", [s.t, s.prompt_tokens_per_s, s.completion_tokens_per_s, s.cached_tokens_per_s]);
  chart("c-total", ["p50", "p95", "p99"], "ms", [s.t, s.total_ms.p50, s.total_ms.p95, s.total_ms.p99]);
  chart("c-ttft", ["p50", "p95", "p99"], "ms", [s.t, s.ttft_ms.p50, s.ttft_ms.p95, s.ttft_ms.p99]);
  chart("c-tpot", ["p50", "p95", "p99"], "ms", [s.t, s.time_per_output_token_ms.p50, s.time_per_output_token_ms.p95, s.time_per_output_token_ms.p99]);

  const traffic = [
    { label: "Requests", num: true, get: (r) => count(r.requests) },
    { label: "Errors", num: true, get: (r) => count(r.errors) },
    { label: "Prompt tokens", num: true, get: (r) => count(r.prompt_tokens) },
    { label: "Completion tokens", num: true, get: (r) => count(r.completion_tokens) },
    { label: "Total p95", num: true, get: (r) => ms(r.latency_ms && r.latency_ms.p95) },
    { label: "Cost", num: true, get: (r) => usd(r.cost_usd) },
  ];
  table("t-alias", "By alias and deployment", [
    { label: "Alias", get: (r) => r.alias },
    { label: "Deployment", get: (r) => r.deployment },
  ].concat(traffic), f.by_alias, "No requests in this range.");
  table("t-endpoint", "By API (chat, Responses, Messages, ...)", [{ label: "Endpoint", get: (r) => r.endpoint }].concat(traffic), f.by_endpoint, "No requests in this range.");

  const sv = f.saved_usd;
  tiles("money-tiles", [
    ["Cost", usd(t.cost_usd), "total-cost"],
    ["Saved", usd(t.saved_usd), null],
    ["Saved by prefix reuse", usd(sv.prefix), null],
    ["Saved by the response cache", usd(sv.cache), null],
    ["Saved by the small-model router", usd(sv.router), null],
  ]);
  const money = [
    { label: "Requests", num: true, get: (r) => count(r.requests) },
    { label: "Cost", num: true, get: (r) => usd(r.cost_usd) },
    { label: "Saved", num: true, get: (r) => usd(r.saved_usd) },
  ];
  table("t-key", "Cost by key", [{ label: "Key", get: (r) => r.key }].concat(money), f.by_key, "No requests in this range.");
  table("t-version", "Cost by model version", [{ label: "Model version", get: (r) => r.model_version }].concat(money), f.by_version, "No registry versions answered in this range.");
  table("t-day", "Cost by day (UTC)", [{ label: "Day", get: (r) => r.day }].concat(money), f.by_day, "No requests in this range.");
  table("t-prefix", "Prefix reuse on the engine", [
    { label: "Deployment", get: (r) => r.deployment },
    { label: "Prompt tokens", num: true, get: (r) => count(r.prompt_tokens) },
    { label: "From the KV cache", num: true, get: (r) => count(r.cached_tokens) },
    { label: "Hit rate", num: true, get: (r) => pct(r.hit_rate) },
  ], f.prefix_reuse, "No requests reached the embedded engine in this range.");
  table("t-guardrails", "Guardrail hits", [
    { label: "Detector", get: (r) => r.detector },
    { label: "Action", get: (r) => r.action },
    { label: "Direction", get: (r) => r.direction },
    { label: "Hits", num: true, get: (r) => count(r.hits) },
  ], f.guardrails, "No guardrail found anything in this range (or [guardrails] is off).");
}

// ---- the live state -----------------------------------------------------------------------

function renderState(s) {
  table("t-deployments", "Deployments now", [
    { label: "Deployment", get: (r) => r.deployment },
    { label: "Alias", get: (r) => r.alias },
    { label: "Kind", get: (r) => r.kind + (r.version ? " (" + r.version + ")" : "") },
    { label: "In flight", num: true, get: (r) => count(r.in_flight) + " of " + count(r.max_concurrency) },
    { label: "Breaker", get: (r) => (r.breaker_open ? "open: failing" : "closed") },
    { label: "Error rate (window)", num: true, get: (r) => (r.error_rate ? pct(r.error_rate.rate) + " of " + count(r.error_rate.requests) : "–") },
    { label: "Engine slots busy", num: true, get: (r) => (r.engine ? count(r.engine.active) + " of " + count(r.engine.parallel) : "–") },
    { label: "Queue", num: true, get: (r) => (r.engine ? count(r.engine.waiting) : "–") },
    { label: "KV cells used", num: true, get: (r) => (r.engine ? count(r.engine.kv_cells_used) + " of " + count(r.engine.kv_cells) : "–") },
    { label: "Sessions", num: true, get: (r) => (r.engine ? count(r.engine.sessions) : "–") },
  ], s.deployments, "No deployments are configured.");

  table("t-canaries", "Canaries", [
    { label: "Alias", get: (r) => r.alias },
    { label: "Canary", get: (r) => r.staging.version || r.staging.deployment },
    { label: "Weight", num: true, get: (r) => r.weight + " %" },
    { label: "Canary errors / p95", num: true, get: (r) => (r.staging.error_rate ? pct(r.staging.error_rate.rate) : "–") + " / " + ms(r.staging.p95_ms) },
    { label: "Production errors / p95", num: true, get: (r) => (r.production.error_rate ? pct(r.production.error_rate.rate) : "–") + " / " + ms(r.production.p95_ms) },
  ], s.releases, "No canary is running. Start one from a model's versions below.");

  const byModel = {};
  for (const v of s.models) (byModel[v.name] = byModel[v.name] || []).push(v);
  const rows = [];
  for (const [name, versions] of Object.entries(byModel)) {
    for (const v of versions) rows.push({ name, v, versions });
  }
  table("t-models", "Model versions", [
    { label: "Version", get: (r) => r.v.id },
    { label: "Stage", get: (r) => r.v.stage + (r.v.canary_weight != null ? " (" + r.v.canary_weight + " %)" : "") },
    { label: "Loaded", get: (r) => (r.v.loaded ? "yes" : "no") },
    { label: "Actions", get: (r) => actions(r.name, r.v, r.versions) },
  ], rows, "No registry models. Add one with `tollgate models add`.");

  table("t-audit", "Audit trail (newest first)", [
    { label: "When", get: (r) => new Date(r.at_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" },
    { label: "Model", get: (r) => r.model },
    { label: "Change", get: (r) => String(r.action || "") + (r.version ? " " + r.version : "") },
    { label: "By", get: (r) => r.actor || "" },
    { label: "Reason", get: (r) => r.reason || "" },
  ], s.audit, "No release changes yet.");

  const alert = [
    { label: "Kind", get: (r) => r.kind },
    { label: "Deployment", get: (r) => r.deployment },
    { label: "Value", num: true, get: (r) => r.value.toFixed(3) + " (threshold " + r.threshold + ")" },
    { label: "Over", num: true, get: (r) => count(r.requests) + " requests" },
    { label: "State", get: (r) => (r.firing ? "FIRING" : "resolved") },
    { label: "Message", get: (r) => r.message },
  ];
  table("t-alerts", "Alerts firing", alert, s.alerts.firing, "No alert is firing.");
  table("t-alert-log", "Alert history (newest last)", alert, s.alerts.history, "No alert has fired since the gateway started.");

  table("t-batches", "Batches (newest first)", [
    { label: "Batch", get: (r) => r.id },
    { label: "Status", get: (r) => r.status },
    { label: "Endpoint", get: (r) => r.endpoint },
    { label: "Progress", get: (r) => progress((r.request_counts.completed || 0) + (r.request_counts.failed || 0), r.request_counts.total || 0, "Batch " + r.id) },
    { label: "Failed", num: true, get: (r) => count(r.request_counts.failed) },
  ], s.batches, "No batches. Post a JSONL file to v1/files and create one with v1/batches.");

  const lim = (v, unit) => (v == null ? "–" : count(v) + " " + unit);
  table("t-keys", "Keys", [
    { label: "Key", get: (r) => r.name },
    { label: "Aliases", get: (r) => r.aliases.join(", ") },
    { label: "Requests / min", num: true, get: (r) => lim(r.requests_per_minute, "req") },
    { label: "Tokens / min", num: true, get: (r) => lim(r.tokens_per_minute, "tok") },
    { label: "Concurrent", num: true, get: (r) => lim(r.max_concurrent, "") },
    { label: "Spent today / budget", num: true, get: (r) => usd(r.spent_usd_today) + " / " + (r.budget_usd_per_day ? usd(r.budget_usd_per_day) : "none") },
    { label: "Spent this month / budget", num: true, get: (r) => usd(r.spent_usd_this_month) + " / " + (r.budget_usd_per_month ? usd(r.budget_usd_per_month) : "none") },
  ], s.keys, s.open ? "Open gateway: no keys are configured." : "No keys are configured.");

  const cl = [];
  if (s.cluster) cl.push({ what: "Redis (limits, budgets, cache, releases)", state: s.cluster.redis + " (replica " + s.cluster.replica + ")" });
  if (s.shared_ledger) cl.push({ what: "PostgreSQL (ledger, releases, batches)", state: s.shared_ledger.postgres });
  table("t-cluster", "Shared state", [
    { label: "Part", get: (r) => r.what },
    { label: "State", get: (r) => r.state },
  ], cl, "A single replica: no [cluster] configured.");
}

// ---- release actions ------------------------------------------------------------------------

function actions(name, v, versions) {
  const box = el("span", { class: "actions" });
  const button = (action, label) =>
    box.append(el("button", { type: "button", "data-action": action, "data-version": v.id, onclick: () => confirmChange(action, name, v.version) }, label));
  const running = v.stage === "staging" && v.canary_weight > 0;
  if (v.stage !== "production") {
    button("canary", running ? "Change weight" : "Canary");
    button("promote", "Promote");
  }
  if (running) button("stop", "Roll back the canary");
  const previous = versions.find((o) => o.previous);
  if (v.stage === "production" && previous) button("rollback", "Roll back to " + previous.version);
  return box;
}

const TITLES = { canary: "Start a canary", promote: "Promote", stop: "Roll back the canary", rollback: "Roll back production" };
const WORDS = {
  canary: (n, v) => "Send this share of " + n + "'s traffic to " + n + "@" + v + ".",
  promote: (n, v) => "Promote " + n + "@" + v + " to production: it is loaded, warmed and checked first, then takes all traffic.",
  stop: (n, v) => "Stop the canary of " + n + "@" + v + ": its weight goes to 0 and production takes all traffic again.",
  rollback: (n) => "Roll " + n + " back: the previous production version answers again.",
};

function confirmChange(action, name, version) {
  const d = $("confirm");
  $("confirm-title").textContent = TITLES[action];
  $("confirm-text").textContent = WORDS[action](name, version);
  $("confirm-reason").value = "";
  $("confirm-error").hidden = true;
  const fields = $("confirm-fields");
  fields.replaceChildren();
  if (action === "canary") {
    fields.append(el("label", { for: "confirm-weight" }, "Weight, percent of traffic"),
      el("input", { id: "confirm-weight", type: "number", min: "0", max: "100", step: "1", value: "10", required: "" }));
  }
  $("confirm-ok").onclick = async (e) => {
    e.preventDefault();
    const body = { reason: $("confirm-reason").value || undefined };
    if (action !== "rollback") body.version = version;
    if (action === "canary") body.weight = Number($("confirm-weight").value);
    if (action === "stop") body.weight = 0;
    const path = action === "stop" ? "canary" : action;
    const r = await fetch("v1/admin/models/" + encodeURIComponent(name) + "/" + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-tollgate-csrf": CSRF },
      body: JSON.stringify(body),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      $("confirm-error").textContent = (err.error && err.error.message) || "The change was refused (" + r.status + ").";
      $("confirm-error").hidden = false;
      return;
    }
    d.close();
    refresh();
  };
  $("confirm-cancel").onclick = () => d.close();
  d.showModal();
}

// ---- polling --------------------------------------------------------------------------------

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (r.status === 401) {
    location.reload();
    throw new Error("the session ended");
  }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [f, s] = await Promise.all([getJSON("admin/dashboard/figures?range=" + range), getJSON("admin/dashboard/state")]);
    renderFigures(f);
    renderState(s);
    $("problem").hidden = true;
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString("en-GB") + " (every " + (range === "15m" || range === "1h" ? 2 : 10) + " s)";
  } catch (e) {
    $("problem").textContent = "Could not load the figures: " + e.message;
    $("problem").hidden = false;
  }
  timer = setTimeout(refresh, range === "15m" || range === "1h" ? 2000 : 10000);
}

$("range").value = range;
$("range").addEventListener("change", () => {
  range = $("range").value;
  sessionStorage.setItem("tollgate-range", range);
  refresh();
});
$("curl").textContent = "curl " + new URL("v1/chat/completions", location.href).href +
  " -H 'content-type: application/json' -H 'authorization: Bearer YOUR_KEY' \\\n  -d '{\"model\": \"ALIAS\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'";
window.addEventListener("resize", () => refresh());
refresh();
