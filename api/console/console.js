// asyncinfer console: polls the admin API every 2 s and renders queues, workers, failures and one job.
// No framework, no build step. Every value from the server is put in the page as text (textContent),
// never as HTML: error messages and results come from users' jobs.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "asyncinfer.token";
const FAILURES_SHOWN = 25;
const TERMINAL = new Set(["completed", "failed", "canceled", "expired"]);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  timer: null,
  busy: false,
  lastStats: new Map(), // model -> {at, completed, failed}
  rates: new Map(), // model -> {completed, failed} per second, smoothed
  overview: null,
  jobId: "",
};

const $ = (id) => document.getElementById(id);

// -- DOM helpers ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}`, text });
}

function num(value, label, hotAt) {
  const cls = value === 0 ? "num zero" : hotAt !== undefined && value >= hotAt ? "num hot" : "num";
  return el("td", { class: cls, "data-label": label, text: formatCount(value) });
}

function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function formatRate(r) {
  if (!r) return "0";
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function formatAge(seconds) {
  if (!seconds) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} m ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function between(fromIso, toIso) {
  if (!fromIso || !toIso) return "–";
  // Both known: a figure, 0 ms included (a retried job a waiting worker takes in the same millisecond).
  const seconds = Math.max(0, (new Date(toIso) - new Date(fromIso)) / 1000);
  return seconds ? formatAge(seconds) : "0 ms";
}

function toast(message, bad = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = bad ? "toast bad" : "toast";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

function confirmAction(title, text, okLabel = "Confirm") {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// -- API -----------------------------------------------------------------------------------------
class AuthError extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  if (response.status === 401) throw new AuthError("token rejected: sign in again");
  if (response.status === 403) throw new AuthError("admin token required");
  let body = null;
  try { body = await response.json(); } catch (_) { /* empty body */ }
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

// -- sign in -------------------------------------------------------------------------------------
function showLogin(message) {
  stopRefresh();
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  setLive("error", message ? "signed out" : "not connected");
  $("token").focus();
}

async function signIn(token, quiet = false) {
  state.token = token;
  try {
    await api("/admin/overview");
  } catch (err) {
    if (err instanceof AuthError) { sessionStorage.removeItem(TOKEN_KEY); showLogin(quiet ? "" : err.message); return; }
    showLogin(`cannot reach the API: ${err.message}`);
    return;
  }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("app").hidden = false;
  // In without a token: authentication is off, there is nothing to sign out of.
  $("signout").hidden = !token;
  startRefresh();
}

function handleError(err) {
  if (err instanceof AuthError) { sessionStorage.removeItem(TOKEN_KEY); showLogin(err.message); return; }
  toast(err.message, true);
}

// -- refresh loop --------------------------------------------------------------------------------
function setLive(kind, text) {
  $("live").className = `live ${kind}`;
  $("live-text").textContent = text;
}

function startRefresh() {
  stopRefresh();
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

function stopRefresh() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function refresh() {
  if (state.busy) return; // a slow answer: skip a tick rather than pile requests up
  state.busy = true;
  try {
    const [overview, dead] = await Promise.all([
      api("/admin/overview"),
      api(`/admin/dead-letters?limit=${FAILURES_SHOWN}`),
    ]);
    state.overview = overview;
    updateRates(overview);
    renderKpis(overview);
    renderQueues(overview, dead.items);
    renderWorkers(overview);
    renderFailures(dead.items);
    if (state.jobId) await showJob(state.jobId, false);
    setLive("ok", `live · ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (err instanceof AuthError) handleError(err);
    else setLive("error", `refresh failed: ${err.message}`);
  } finally {
    state.busy = false;
  }
}

function updateRates(overview) {
  const now = Date.now();
  for (const model of overview.models) {
    const stats = { at: now, completed: model.stats.completed || 0, failed: model.stats.failed || 0 };
    const last = state.lastStats.get(model.name);
    if (last && now > last.at) {
      const dt = (now - last.at) / 1000;
      const fresh = {
        completed: Math.max(0, stats.completed - last.completed) / dt,
        failed: Math.max(0, stats.failed - last.failed) / dt,
      };
      const old = state.rates.get(model.name);
      // light smoothing so one slow tick does not make the figure jump
      state.rates.set(model.name, old ? {
        completed: 0.5 * old.completed + 0.5 * fresh.completed,
        failed: 0.5 * old.failed + 0.5 * fresh.failed,
      } : fresh);
    }
    state.lastStats.set(model.name, stats);
  }
}

// -- rendering -----------------------------------------------------------------------------------
function renderKpis(overview) {
  let pending = 0, inflight = 0, dead = 0, alive = 0, done = 0, failed = 0;
  for (const m of overview.models) {
    pending += m.pending.high + m.pending.normal + m.pending.low;
    inflight += m.inflight;
    dead += m.dead;
    alive += m.workers.filter((w) => w.alive).length;
    const r = state.rates.get(m.name) || { completed: 0, failed: 0 };
    done += r.completed;
    failed += r.failed;
  }
  const mem = overview.redis;
  const memText = mem.memory_max_bytes
    ? `${Math.round((100 * mem.memory_used_bytes) / mem.memory_max_bytes)}%`
    : formatBytes(mem.memory_used_bytes);
  const memKind = mem.memory_max_bytes && mem.memory_used_bytes / mem.memory_max_bytes > 0.85 ? "bad" : "info";
  const tiles = [
    ["Pending", formatCount(pending), pending > 0 && alive === 0 ? "bad" : pending > 0 ? "warn" : "ok"],
    ["In flight", formatCount(inflight), inflight ? "info" : ""],
    ["Completed/s", formatRate(done), done ? "ok" : ""],
    ["Failed/s", formatRate(failed), failed ? "bad" : "ok"],
    ["Dead letters", formatCount(dead), dead ? "bad" : "ok"],
    ["Workers alive", String(alive), alive ? "ok" : pending ? "bad" : ""],
    ["Redis memory", memText, memKind],
  ];
  $("kpis").replaceChildren(...tiles.map(([label, value, kind]) =>
    el("div", { class: `kpi ${kind}` }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }))));
}

function modelState(m) {
  const pending = m.pending.high + m.pending.normal + m.pending.low;
  const alive = m.workers.filter((w) => w.alive).length;
  if (m.paused) return badge("paused", "paused");
  if (pending > 0 && alive === 0) return badge("no workers", "bad");
  const held = m.workers.reduce((sum, w) => sum + w.holding, 0);
  if (pending + m.inflight + held > 0) return badge("running", "running");
  return badge("idle", "idle");
}

function renderQueues(overview, deadItems) {
  const rows = overview.models.map((m) => {
    const rate = state.rates.get(m.name) || { completed: 0, failed: 0 };
    const oldest = Math.max(m.oldest_pending_age_s.high, m.oldest_pending_age_s.normal, m.oldest_pending_age_s.low);
    const alive = m.workers.filter((w) => w.alive).length;
    const oldestCell = el("td", { class: `num ${oldest >= 300 ? "hot" : oldest >= 30 ? "warm" : oldest ? "" : "zero"}`, "data-label": "Oldest", text: formatAge(oldest) });
    const retryable = deadItems.filter((j) => j.model === m.name).length || m.dead;
    const pauseButton = m.paused
      ? el("button", { class: "btn btn-small", type: "button", text: "Resume", onclick: () => setPaused(m.name, false) })
      : el("button", { class: "btn btn-small", type: "button", text: "Pause", onclick: () => setPaused(m.name, true) });
    const retryAll = el("button", {
      class: "btn btn-small", type: "button", text: "Retry all failed", disabled: m.dead === 0,
      onclick: () => retryAllFailed(m.name, retryable),
    });
    return el("tr", { "data-model": m.name },
      el("td", { class: "title" }, el("strong", { text: m.name })),
      el("td", { "data-label": "State" }, modelState(m)),
      num(m.pending.high, "High"), num(m.pending.normal, "Normal"), num(m.pending.low, "Low"),
      oldestCell,
      num(m.inflight, "In flight"),
      num(m.dead, "Dead", 1),
      el("td", { class: alive === 0 && m.workers.length === 0 ? "num zero" : "num", "data-label": "Workers", text: `${alive}/${m.workers.length}` }),
      el("td", { class: "num", "data-label": "Done/s", text: formatRate(rate.completed) }),
      el("td", { class: rate.failed > 0 ? "num hot" : "num zero", "data-label": "Failed/s", text: formatRate(rate.failed) }),
      el("td", { class: "actions" }, pauseButton, retryAll));
  });
  const body = $("queues").tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: 12, text: "no models" }))]));
  $("queues-note").textContent = `server time ${formatTime(overview.now)}`;
}

function renderWorkers(overview) {
  const rows = [];
  for (const m of overview.models) {
    for (const w of m.workers) {
      rows.push(el("tr", {},
        el("td", { "data-label": "Model", text: m.name }),
        el("td", { class: "mono", "data-label": "Worker", text: w.id }),
        num(w.holding, "Holding"),
        el("td", { "data-label": "Heartbeat" }, badge(w.alive ? "alive" : "stale", w.alive ? "alive" : "stale"))));
    }
  }
  $("workers").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: 4, text: "no workers registered" }))]));
}

function renderFailures(items) {
  const sorted = [...items].sort((a, b) => (b.finished_at || "").localeCompare(a.finished_at || ""));
  const rows = sorted.slice(0, FAILURES_SHOWN).map((job) => el("tr", { "data-job": job.job_id },
    el("td", { class: "nowrap", "data-label": "Failed", text: formatTime(job.finished_at) }),
    el("td", { "data-label": "Model", text: job.model || "–" }),
    el("td", { "data-label": "Job" }, el("button", { class: "link", type: "button", text: job.job_id, onclick: () => lookUp(job.job_id) })),
    el("td", { class: "num", "data-label": "Attempts", text: String(job.attempts) }),
    el("td", { class: "error-cell", text: job.error || job.status }),
    el("td", { class: "actions" },
      el("button", { class: "btn btn-small", type: "button", text: "Retry", onclick: () => retryJob(job.job_id) }))));
  $("failures").tBodies[0].replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: 6, text: "no failures: nothing in the dead-letter lists" }))]));
}

// When the job's latest attempt began to wait: a worker's retry or a recovery puts it back without
// touching queued_at (the first queue time), an admin retry sets queued_at anew.
function latestQueued(job) {
  if (!job.requeued_at) return job.queued_at;
  return !job.queued_at || new Date(job.requeued_at) > new Date(job.queued_at) ? job.requeued_at : job.queued_at;
}

function renderJob(job) {
  const box = $("job");
  const actions = [];
  if (job.status === "failed" || job.status === "expired") {
    actions.push(el("button", { class: "btn btn-small btn-primary", type: "button", text: "Retry", onclick: () => retryJob(job.job_id) }));
  }
  if (job.status === "pending") {
    actions.push(el("button", { class: "btn btn-small btn-danger", type: "button", text: "Cancel", onclick: () => cancelJob(job.job_id) }));
  }
  const facts = [
    ["Model", `${job.model || "–"}${job.model_version ? ` · ${job.model_version}` : ""}`],
    ["Priority", job.priority],
    ["Attempts", String(job.attempts)],
    ["Input size", formatBytes(job.input_bytes)],
    ["Created", formatTime(job.created_at)],
    ["Queued", formatTime(job.queued_at)],
    ["Started", formatTime(job.started_at)],
    ["Finished", formatTime(job.finished_at)],
    ["Waited", job.status === "pending" ? "–" : between(latestQueued(job), job.started_at)],
    ["Ran", between(job.started_at, job.finished_at)],
    ["Worker", job.worker || "–"],
    ["Owner", job.owner || "–"],
  ];
  const children = [
    el("div", { class: "job-head" },
      el("div", {}, el("span", { class: "mono", text: job.job_id }), " ", badge(job.status, job.status)),
      el("div", {}, ...actions)),
    el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
  ];
  if (job.error) {
    children.push(el("div", { class: "section-label", text: "Error" }), el("pre", { class: "error", text: job.error }));
  }
  if (job.result !== null && job.result !== undefined) {
    children.push(el("div", { class: "section-label", text: "Result" }), el("pre", { text: JSON.stringify(job.result, null, 2) }));
  }
  if (job.notification) {
    const n = job.notification;
    children.push(el("div", { class: "section-label", text: "Webhook" }),
      el("p", { class: "small", text: `${n.state}, ${n.attempts} attempt(s)${n.last_status ? `, last status ${n.last_status}` : ""}${n.last_error ? `: ${n.last_error}` : ""}` }));
  }
  box.replaceChildren(...children);
  box.hidden = false;
  box.dataset.status = job.status;
}

// -- actions -------------------------------------------------------------------------------------
async function showJob(jobId, reportErrors = true) {
  try {
    renderJob(await api(`/admin/jobs/${encodeURIComponent(jobId)}`));
  } catch (err) {
    if (err instanceof AuthError) throw err;
    if (reportErrors) {
      $("job").replaceChildren(el("p", { class: "error-text", text: err.message }));
      $("job").hidden = false;
      state.jobId = "";
    }
  }
}

function lookUp(jobId) {
  state.jobId = jobId.trim();
  $("lookup-id").value = state.jobId;
  if (state.jobId) showJob(state.jobId).catch(handleError);
}

async function retryJob(jobId) {
  try {
    await api(`/job/${encodeURIComponent(jobId)}/retry`, { method: "POST" });
    toast(`Job ${jobId} is pending again`);
    lookUp(jobId);
    refresh();
  } catch (err) { handleError(err); }
}

async function cancelJob(jobId) {
  if (!(await confirmAction("Cancel this job?", `Job ${jobId} will end as canceled and never run.`, "Cancel job"))) return;
  try {
    await api(`/job/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    toast(`Job ${jobId} canceled`);
    lookUp(jobId);
  } catch (err) { handleError(err); }
}

async function retryAllFailed(model, count) {
  const ok = await confirmAction(`Retry all failed jobs of ${model}?`,
    `${count} dead-lettered job(s) go back to their pending lists and run again with a fresh attempt count.`, "Retry all");
  if (!ok) return;
  try {
    const result = await api("/admin/dead-letters/retry", { method: "POST", body: { model } });
    toast(`${result.retried} job(s) of ${model} requeued`);
    refresh();
  } catch (err) { handleError(err); }
}

async function setPaused(model, paused) {
  if (paused && !(await confirmAction(`Pause ${model}?`,
    "Workers stop taking this model's jobs; submits are still accepted and wait until you resume.", "Pause"))) return;
  try {
    await api(`/admin/models/${encodeURIComponent(model)}/${paused ? "pause" : "resume"}`, { method: "POST" });
    toast(`${model} ${paused ? "paused" : "resumed"}`);
    refresh();
  } catch (err) { handleError(err); }
}

// -- start ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
    $("token").value = "";
  });
  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp($("lookup-id").value);
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = "";
    showLogin("");
  });
  // Without a stored token, try without one: an API with authentication off (the local stack) lets
  // everyone in as admin; otherwise the sign-in form shows.
  signIn(state.token, !state.token);
});
