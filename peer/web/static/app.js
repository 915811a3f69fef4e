// Flamenco Peer dashboard. Plain JavaScript, no build step, no third-party code.
//
// The page reads the farm through the peer's JSON API (the same one the CLI
// uses) and listens to the peer's event stream only to learn *when* to read
// again and *what*: the stream names the kinds of change, and this script
// refetches just the parts on screen that those kinds affect, at most one
// round every MIN_GAP_MS. See docs/dashboard.md.
"use strict";

const MIN_GAP_MS = 250;          // between two refresh rounds, however many changes arrive
const RETRY_BUSY_MS = 1500;      // after a 502/503 (the farm is choosing a coordinator)
const STREAM_BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const MAX_WORKER_DETAILS = 32;   // current task of at most this many workers per round
const MAX_THUMBNAILS = 20;       // jobs whose last-rendered thumbnail is shown in the list

const FINAL_JOB = new Set(["completed", "canceled", "failed"]);

// Every job action the dashboard offers; `from` lists the statuses where it applies.
const JOB_ACTIONS = [
  {id: "pause", label: "Pause", status: "pause-requested", from: ["active", "queued", "requeueing"]},
  {id: "resume", label: "Resume", status: "requeueing", from: ["paused", "pause-requested"]},
  {id: "requeue", label: "Requeue", status: "requeueing", from: ["completed", "failed", "canceled"],
   confirm: (job) => ({title: `Requeue “${job.name}”?`, ok: "Requeue",
     text: "Its tasks run again and overwrite what they rendered before."})},
  {id: "cancel", label: "Cancel job", status: "cancel-requested",
   from: ["active", "queued", "paused", "pause-requested", "requeueing"],
   confirm: (job) => ({title: `Cancel “${job.name}”?`, ok: "Cancel the job",
     text: "Running tasks are stopped and no further task starts. You can requeue it later."})},
  {id: "delete", label: "Delete", danger: true,
   confirm: (job) => ({title: `Delete “${job.name}”?`, ok: "Delete",
     text: "The job, its tasks and their logs are removed from the farm. Rendered files stay on disk. This cannot be undone."})},
];

const state = {
  info: null,
  features: {},
  jobs: [],
  workers: [],
  workerTasks: {},      // worker id -> {id, name, job_id} of its current task
  cluster: null,
  farmStatus: "",
  jobId: null,
  taskId: null,
  job: null,
  tasks: [],
  task: null,
  blocklist: null,
  lastRendered: {},     // job id -> {info, updated}
  busy: false,          // a 502/503 was seen: the farm is (re)electing
};

// --- small helpers -----------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

// Live updates rebuild rows and buttons; whoever was using the keyboard keeps their place.
function focusKey(container) {
  const el = document.activeElement;
  if (!el || el === document.body || !container.contains(el)) return null;
  const what = el.classList.contains("row-link") ? "a.row-link"
    : el.dataset.action ? `[data-action="${el.dataset.action}"]` : null;
  if (!what) return null;
  const row = el.closest("tr");
  const rowKey = row ? Object.entries(row.dataset)[0] : null;
  return {what, rowKey};
}

function restoreFocus(container, key) {
  if (!key) return;
  let scope = container;
  if (key.rowKey) {
    const [name, value] = key.rowKey;
    scope = [...container.querySelectorAll("tr")].find((row) => row.dataset[name] === value);
  }
  const target = scope && scope.querySelector(key.what);
  if (target) target.focus({preventScroll: true});
}

function rebuild(container, fill) {
  const key = focusKey(container);
  clear(container);
  fill(container);
  restoreFocus(container, key);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function timeEl(iso) { return iso ? h("time", {datetime: iso, text: when(iso)}) : "—"; }

function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// Tasks carry `started` and `finished` once the coordinator records them (see docs/dashboard.md).
function taskDuration(task) {
  if (typeof task.duration_s === "number") return duration(task.duration_s);
  if (!task.started) return "—";
  const end = task.finished ? new Date(task.finished) : (task.status === "active" ? new Date() : null);
  return end ? duration((end - new Date(task.started)) / 1000) : "—";
}

function statusBadge(status) {
  return h("span", {class: "badge", dataset: {status: status || "unknown"}, text: status || "unknown"});
}

function progress(done, total) {
  const wrap = h("span", {class: "progress"});
  if (!total) { wrap.append("—"); return wrap; }
  const pct = Math.round((100 * done) / total);
  wrap.append(h("progress", {max: total, value: done, "aria-label": `${pct}% (${done} of ${total} steps)`}),
              h("span", {class: "small", text: `${pct}%`}));
  return wrap;
}

function submitter(job) {
  const md = job.metadata || {};
  return md["user.name"] || md["user.email"] || job.submitter_platform || "—";
}

function jobLink(job) { return `#/job/${encodeURIComponent(job.id)}`; }
function taskLink(jobId, taskId) { return `#/job/${encodeURIComponent(jobId)}/task/${encodeURIComponent(taskId)}`; }

function toast(message, kind) {
  const box = $("toasts");
  const item = h("div", {class: `toast ${kind || ""}`, role: kind === "error" ? "alert" : null, text: message});
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4000);
}

function banner(message) {
  const el = $("banner");
  el.textContent = message || "";
  el.hidden = !message;
}

// --- talking to the peer ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = {method, headers: {Accept: "application/json"}, credentials: "same-origin", cache: "no-store"};
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (err) {
    throw new ApiError(0, `this peer cannot be reached (${err.message}); is it still running?`);
  }
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  let data = null;
  try {
    data = type.includes("json") ? await resp.json() : await resp.text();
  } catch (err) {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.message) || (typeof data === "string" && data) || `HTTP ${resp.status}`;
    if (resp.status === 401) unauthorized(message);
    throw new ApiError(resp.status, message);
  }
  return data;
}

function unauthorized(message) {
  // A browser on another computer whose session ended: the page at / asks for the code again.
  if (state.info && state.info.viewer === "browser") {
    window.location.assign("/");
    return;
  }
  banner(`This peer refuses the dashboard's requests: ${message}`);
}

// --- refreshing: coalesced rounds, only the parts that changed ---------------------------------

const ALL_PARTS = ["status", "cluster", "jobs", "workers", "job", "task", "log", "blocklist", "images", "jobTypes"];
const refresh = {pending: new Set(), running: false, timer: null, last: 0};

function want(...parts) {
  for (const part of parts.flat()) refresh.pending.add(part);
  schedule(0);
}

function schedule(delay) {
  if (refresh.running || refresh.timer) return;
  const wait = Math.max(delay, refresh.last + MIN_GAP_MS - Date.now(), 0);
  refresh.timer = setTimeout(runRefresh, wait);
}

async function runRefresh() {
  refresh.timer = null;
  if (!refresh.pending.size) return;
  refresh.running = true;
  refresh.last = Date.now();
  const parts = refresh.pending;
  refresh.pending = new Set();
  const failed = [];
  let busy = false;
  await Promise.all([...parts].map(async (part) => {
    try {
      await LOADERS[part]();
    } catch (err) {
      if (err.status === 502 || err.status === 503 || err.status === 0) { busy = true; failed.push(part); }
      else if (err.status !== 401) toast(err.message, "error");
    }
  }));
  refresh.running = false;
  if (busy) {
    state.busy = true;
    banner("The farm is choosing a coordinator (or this peer lost it); the view catches up by itself in a moment.");
    for (const part of failed) refresh.pending.add(part);
    schedule(RETRY_BUSY_MS);
  } else {
    if (state.busy) { state.busy = false; banner(""); }
    if (refresh.pending.size) schedule(MIN_GAP_MS);
  }
}

// What each kind of farm event (coordinator/events.py) can change on screen.
const PARTS_BY_KIND = {
  "job-submitted": ["jobs", "status"],
  "job-status-changed": ["jobs", "job", "status"],
  "job-priority-changed": ["jobs", "job"],
  "job-deleted": ["jobs", "job", "task", "status"],
  "tasks-status-changed": ["jobs", "job", "task", "workers", "cluster", "images"],
  "task-assigned": ["jobs", "job", "task", "workers", "cluster"],
  "task-progressed": ["jobs", "job", "task", "images"],
  "task-failure-recorded": ["job", "task"],
  "task-failures-cleared": ["job", "task"],
  "worker-updated": ["workers", "status", "cluster"],
  "worker-blocklisted": ["blocklist"],
  "blocklist-entries-removed": ["blocklist"],
  "job-type-published": ["jobTypes"],
  "job-type-withdrawn": ["jobTypes"],
  "cluster": ALL_PARTS,
  "peers": ["cluster", "workers"],  // a worker's state changed (heartbeats, not the event log)
};

function onChanged(change) {
  if (change.all) { want(ALL_PARTS); return; }
  for (const kind of change.kinds || []) {
    if (kind === "task-logged") continue;
    want(PARTS_BY_KIND[kind] || ALL_PARTS);
  }
  if (state.taskId && (change.logged_tasks || []).includes(state.taskId)) want("log");
}

// --- the live stream ------------------------------------------------------------------------

const stream = {source: null, attempt: 0, timer: null};

function setLive(kind, text) {
  const el = $("live");
  el.dataset.state = kind;
  el.textContent = text;
}

function connectStream() {
  stream.timer = null;
  const source = new EventSource(state.info.events);
  stream.source = source;
  source.addEventListener("hello", () => {
    stream.attempt = 0;
    setLive("live", "Live");
    want(ALL_PARTS);  // whatever happened while disconnected
  });
  source.addEventListener("changed", (event) => {
    try { onChanged(JSON.parse(event.data)); } catch (err) { want(ALL_PARTS); }
  });
  source.onerror = () => {
    source.close();
    if (stream.source !== source) return;
    stream.source = null;
    const delay = STREAM_BACKOFF_MS[Math.min(stream.attempt, STREAM_BACKOFF_MS.length - 1)];
    const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
    stream.attempt += 1;
    setLive("lost", `Live updates lost; retrying in ${Math.round(jittered / 1000)} s`);
    stream.timer = setTimeout(() => {
      // Check the session first: an expired one sends a remote browser to the login page.
      api("GET", "/web/info").then(connectStream, () => connectStream());
    }, jittered);
  };
}

// --- loaders: fetch one part and render it -------------------------------------------------------

const LOADERS = {
  async status() {
    const data = await api("GET", "/api/v3/status");
    state.farmStatus = data.status;
    const el = $("farm-status");
    el.textContent = data.status;
    el.dataset.status = data.status;
  },

  async cluster() {
    if (!state.features.cluster) { renderFarm(); return; }
    state.cluster = await api("GET", "/peer/v1/cluster/status");
    renderFarm();
    renderWorkers();  // mode and reasons come from the peers' heartbeats
  },

  async jobs() {
    const data = await api("GET", "/api/v3/jobs");
    state.jobs = (data.jobs || []).slice().sort((a, b) => (b.created || "").localeCompare(a.created || ""));
    renderJobs();
    if (state.features.last_rendered) await loadThumbnails();
  },

  async workers() {
    const data = await api("GET", "/api/v3/worker-mgt/workers");
    state.workers = data.workers || [];
    const awake = state.workers.filter((w) => w.status !== "offline").slice(0, MAX_WORKER_DETAILS);
    const details = await Promise.all(awake.map((w) =>
      api("GET", `/api/v3/worker-mgt/workers/${encodeURIComponent(w.id)}`).catch(() => null)));
    state.workerTasks = {};
    for (const d of details) {
      if (!d) continue;
      state.workerTasks[d.id] = d.task || null;
      const summary = state.workers.find((w) => w.id === d.id);
      if (summary) Object.assign(summary, {...d, ...summary, task: d.task});
    }
    renderWorkers();
  },

  async job() {
    if (!state.jobId) { state.job = null; state.tasks = []; renderJob(); return; }
    const id = state.jobId;
    try {
      const [job, tasks] = await Promise.all([
        api("GET", `/api/v3/jobs/${encodeURIComponent(id)}`),
        api("GET", `/api/v3/jobs/${encodeURIComponent(id)}/tasks`),
      ]);
      if (state.jobId !== id) return;
      state.job = job;
      state.tasks = tasks.tasks || [];
    } catch (err) {
      if (err.status !== 404) throw err;
      if (state.jobId === id) {
        toast("That job no longer exists (it was deleted).");
        window.location.hash = "#/";
      }
      return;
    }
    renderJob();
  },

  async task() {
    if (!state.taskId) { state.task = null; renderTask(); return; }
    const id = state.taskId;
    try {
      const task = await api("GET", `/api/v3/tasks/${encodeURIComponent(id)}`);
      if (state.taskId !== id) return;
      state.task = task;
    } catch (err) {
      if (err.status !== 404) throw err;
      state.task = null;
    }
    renderTask();
  },

  async log() {
    if (!state.taskId) return;
    const id = state.taskId;
    const [tail, info] = await Promise.all([
      api("GET", `/api/v3/tasks/${encodeURIComponent(id)}/logtail`).catch((err) => {
        if (err.status === 404) return null; throw err;
      }),
      api("GET", `/api/v3/tasks/${encodeURIComponent(id)}/log`).catch(() => null),
    ]);
    if (state.taskId !== id) return;
    const pre = $("log");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    pre.textContent = tail || "(nothing logged yet)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    const full = $("log-full");
    full.hidden = !(info && info.url);
    if (info && info.url) full.href = info.url;
  },

  async blocklist() {
    const section = $("blocklist");
    if (!state.features.blocklist || !state.jobId) { section.hidden = true; return; }
    const id = state.jobId;
    const entries = await api("GET", `/api/v3/jobs/${encodeURIComponent(id)}/blocklist`);
    if (state.jobId !== id) return;
    state.blocklist = Array.isArray(entries) ? entries : [];
    renderBlocklist();
  },

  async images() {
    if (state.features.last_rendered && state.jobId) await loadJobImage(state.jobId);
    if (state.features.global_last_rendered) {
      const info = await api("GET", "/api/v3/jobs/last-rendered").catch(() => null);
      showImage("farm", info, "Last rendered frame on the farm");
    }
  },

  async jobTypes() {
    const box = $("job-type-errors");
    if (!state.features.job_type_errors) { box.hidden = true; return; }
    const errors = await api("GET", "/peer/v1/job-types/errors");
    const list = clear($("job-type-errors-list"));
    for (const e of errors || []) list.append(h("li", {}, h("strong", {text: e.name || e.path}), `: ${e.message}`));
    box.hidden = !(errors && errors.length);
  },
};

// --- last rendered images (shown only where the API offers them) ---------------------------------

function imageUrls(info) {
  // Flamenco's shape: {base: "/job-files/…", suffixes: ["last-rendered.jpg", "…-small.jpg", "…-tiny.jpg"]}.
  if (!info || !info.base || !Array.isArray(info.suffixes) || !info.suffixes.length) return null;
  const url = (suffix) => `${info.base.replace(/\/$/, "")}/${suffix}`;
  const find = (word) => info.suffixes.find((s) => s.includes(word));
  const full = info.suffixes.find((s) => !s.includes("small") && !s.includes("tiny")) || info.suffixes[0];
  return {full: url(full), small: url(find("small") || full), tiny: url(find("tiny") || find("small") || full)};
}

function showImage(where, info, alt) {
  const fig = $(`${where}-image`);
  const urls = imageUrls(info);
  fig.hidden = !urls;
  if (!urls) return;
  const img = $(`${where}-image-img`);
  const stamp = `v=${encodeURIComponent(info.updated || Date.now())}`;
  const src = `${urls.small}${urls.small.includes("?") ? "&" : "?"}${stamp}`;
  if (img.dataset.src !== src) { img.src = src; img.dataset.src = src; }
  img.alt = alt;
  $(`${where}-image-link`).href = urls.full;
}

async function loadJobImage(jobId) {
  const info = await api("GET", `/api/v3/jobs/${encodeURIComponent(jobId)}/last-rendered`).catch((err) => {
    if (err.status === 404) return null; throw err;
  });
  if (state.jobId !== jobId) return;
  const job = state.job || state.jobs.find((j) => j.id === jobId);
  showImage("job", info, job ? `Last rendered frame of ${job.name}` : "Last rendered frame");
}

async function loadThumbnails() {
  const recent = state.jobs.slice(0, MAX_THUMBNAILS);
  await Promise.all(recent.map(async (job) => {
    const known = state.lastRendered[job.id];
    if (known && known.updated === job.updated) return;
    const info = await api("GET", `/api/v3/jobs/${encodeURIComponent(job.id)}/last-rendered`).catch(() => null);
    state.lastRendered[job.id] = {info, updated: job.updated};
  }));
  renderJobs();
}

// --- rendering ----------------------------------------------------------------------------------

function renderJobs() {
  $("jobs-empty").hidden = state.jobs.length > 0;
  rebuild($("jobs-body"), fillJobs);
  applyFeatures();
}

function fillJobs(body) {
  for (const job of state.jobs) {
    const selected = job.id === state.jobId;
    const thumbCell = h("td", {class: "thumb-col", dataset: {feature: "last_rendered"}});
    const thumb = state.lastRendered[job.id] && imageUrls(state.lastRendered[job.id].info);
    if (thumb) thumbCell.append(h("img", {src: `${thumb.tiny}?v=${encodeURIComponent(job.updated || "")}`, alt: "", class: "thumb"}));
    const row = h("tr", {dataset: {jobId: job.id}, class: selected ? "selected" : null, "aria-current": selected ? "true" : null},
      thumbCell,
      h("td", {}, h("a", {href: jobLink(job), class: "row-link", text: job.name})),
      h("td", {}, statusBadge(job.status)),
      h("td", {}, progress(job.steps_completed || 0, job.steps_total || 0)),
      h("td", {class: "opt num", text: String(job.priority)}),
      h("td", {class: "opt", text: submitter(job)}),
      h("td", {class: "opt"}, timeEl(job.created)),
      h("td", {class: "opt"}, FINAL_JOB.has(job.status) ? timeEl(job.updated) : "—"),
    );
    body.append(row);
  }
}

function fact(list, label, value) {
  list.append(h("dt", {text: label}), h("dd", {}, value === undefined || value === null || value === "" ? "—" : value));
}

function renderJob() {
  const section = $("job");
  const job = state.job;
  section.hidden = !job;
  if (!job) { $("job-image").hidden = true; return; }
  $("job-title").textContent = job.name;
  const facts = clear($("job-facts"));
  fact(facts, "Status", statusBadge(job.status));
  fact(facts, "Activity", job.activity);
  fact(facts, "Progress", progress(job.steps_completed || 0, job.steps_total || 0));
  fact(facts, "Type", job.type);
  fact(facts, "Priority", String(job.priority));
  fact(facts, "Submitter", submitter(job));
  fact(facts, "Created", timeEl(job.created));
  fact(facts, FINAL_JOB.has(job.status) ? "Finished" : "Updated", timeEl(job.updated));
  fact(facts, "ID", h("code", {text: job.id}));

  rebuild($("job-actions"), (actions) => {
    for (const action of JOB_ACTIONS) {
      if (action.from && !action.from.includes(job.status)) continue;
      actions.append(h("button", {
        type: "button", class: action.danger || action.confirm ? "danger" : null,
        dataset: {action: action.id}, onclick: (e) => runJobAction(action, job, e.currentTarget), text: action.label,
      }));
    }
  });
  const input = $("priority-input");
  if (document.activeElement !== input) input.value = job.priority;

  rebuild($("tasks-body"), (body) => {
    for (const task of state.tasks) {
      const selected = task.id === state.taskId;
      body.append(h("tr", {dataset: {taskId: task.id}, class: selected ? "selected" : null, "aria-current": selected ? "true" : null},
        h("td", {}, h("a", {href: taskLink(job.id, task.id), class: "row-link", text: task.name})),
        h("td", {}, statusBadge(task.status)),
        h("td", {text: task.worker ? task.worker.name : "—"}),
        h("td", {class: "opt", text: taskDuration(task)}),
        h("td", {class: "num", text: `${task.steps_completed}/${task.steps_total}`}),
      ));
    }
  });
  renderJobs();  // the selected row
}

function renderTask() {
  const section = $("task");
  const task = state.task;
  section.hidden = !task;
  if (!task) return;
  $("task-title").textContent = `Task ${task.name}`;
  $("task-close").href = state.jobId ? jobLink({id: state.jobId}) : "#/";
  const facts = clear($("task-facts"));
  fact(facts, "Status", statusBadge(task.status));
  fact(facts, "Activity", task.activity);
  fact(facts, "Worker", task.worker ? task.worker.name : "—");
  fact(facts, "Steps", `${task.steps_completed}/${task.steps_total}`);
  fact(facts, "Duration", taskDuration(task));
  fact(facts, "Type", task.task_type);
  fact(facts, "Updated", timeEl(task.updated));
  if (task.failed_by_workers && task.failed_by_workers.length) {
    fact(facts, "Failed on", task.failed_by_workers.map((w) => w.name).join(", "));
  }
  rebuild($("task-actions"), (actions) => {
    if (task.status !== "queued") {
      actions.append(h("button", {type: "button", class: "danger", dataset: {action: "requeue-task"},
        onclick: (e) => requeueTask(task, e.currentTarget), text: "Requeue task"}));
    }
  });
}

function renderBlocklist() {
  const section = $("blocklist");
  const list = clear($("blocklist-items"));
  const entries = state.blocklist || [];
  section.hidden = false;
  for (const e of entries) {
    list.append(h("li", {}, h("strong", {text: e.worker_name || e.worker_id}), ` — no more “${e.task_type}” tasks`));
  }
  $("blocklist-empty").hidden = entries.length > 0;
  $("blocklist-clear").hidden = entries.length === 0;
}

// What a peer says about its own worker in heartbeats: state, reason, mode, availability (when it says).
function peerWorker(id) {
  const c = state.cluster;
  if (!c || !id) return null;
  if (c.self && c.self.peer_id === id) return c.self.worker || null;
  const peer = (c.peers || []).find((p) => p.peer_id === id);
  return peer ? peer.worker || null : null;
}

function workerDoing(worker) {
  if (!worker || !worker.state) return "";
  const reason = worker.reason && !worker.state.includes(worker.reason) ? `: ${worker.reason}` : "";
  return `${worker.state}${reason}`;
}

function peerName(id) {
  const c = state.cluster;
  if (!c || !id) return id ? id.slice(0, 8) : "";
  if (c.self && c.self.peer_id === id) return c.self.name;
  const peer = (c.peers || []).find((p) => p.peer_id === id);
  return peer ? peer.name : id.slice(0, 8);
}

function renderFarm() {
  const c = state.cluster;
  const line = $("coordinator-line");
  $("peers-box").hidden = !c;
  if (!c) {
    line.textContent = state.info ? `${state.info.peer.name} coordinates this farm on its own.` : "—";
    return;
  }
  clear(line);
  if (c.coordinator && c.coordinator.peer_id) {
    line.append("Coordinator: ", h("strong", {id: "coordinator-name", text: peerName(c.coordinator.peer_id)}),
                h("span", {class: "muted small", text: ` (epoch ${c.coordinator.epoch})`}));
  } else {
    line.append(h("strong", {id: "coordinator-name", text: "none right now"}),
                ` — ${(c.self && c.self.waiting_reason) || "the farm is electing one"}`);
  }
  const body = clear($("peers-body"));
  const me = Object.assign({}, c.self, {alive: true, last_heard_s: 0, me: true});
  for (const peer of [me, ...(c.peers || [])]) {
    const worker = peer.worker || {};
    let doing = workerDoing(worker);
    if (!doing && worker.current_task) doing = "working";
    else if (!doing && worker.enabled) doing = "idle";
    const stateText = peer.alive ? (doing || "up") : `gone for ${Math.round(peer.last_heard_s || 0)} s`;
    body.append(h("tr", {dataset: {peerId: peer.peer_id}},
      h("td", {}, peer.name, peer.me ? h("span", {class: "muted small", text: " (this peer)"}) : null),
      h("td", {text: peer.role || "—"}),
      h("td", {text: stateText}),
      h("td", {class: "opt num", text: String(peer.applied ?? "—")}),
    ));
  }
}

function workerMode(w) {
  const pw = peerWorker(w.id);
  return w.mode || (pw && pw.mode) || "";
}

function renderWorkers() {
  $("workers-empty").hidden = state.workers.length > 0;
  const showMode = state.workers.some((w) => workerMode(w));
  document.querySelectorAll('[data-optional="mode"]').forEach((el) => { el.hidden = !showMode; });
  rebuild($("workers-body"), (body) => fillWorkers(body, showMode));
  applyFeatures();
}

function fillWorkers(body, showMode) {
  for (const w of state.workers) {
    const task = state.workerTasks[w.id] || w.task;
    let doing;
    if (task) {
      doing = h("a", {href: taskLink(task.job_id, task.id), class: "row-link", text: task.name});
    } else {
      const pw = peerWorker(w.id);
      const why = w.idle_reason || w.why_idle;
      const text = why ? `idle: ${why}` : (workerDoing(pw) || "idle");
      doing = h("span", {class: "muted", title: (pw && pw.availability) || null,
                         text: w.status === "offline" && !why ? "—" : text});
    }
    const actionsCell = h("td", {dataset: {feature: "worker_sleep"}});
    if (state.features.worker_sleep && w.status === "awake") {
      actionsCell.append(h("button", {type: "button", class: "small-button", dataset: {action: "sleep"},
        onclick: (e) => setWorkerStatus(w, "asleep", e.currentTarget), text: "Sleep"}));
    } else if (state.features.worker_sleep && w.status === "asleep") {
      actionsCell.append(h("button", {type: "button", class: "small-button", dataset: {action: "wake"},
        onclick: (e) => setWorkerStatus(w, "awake", e.currentTarget), text: "Wake"}));
    }
    body.append(h("tr", {dataset: {workerId: w.id}},
      h("td", {}, w.name, w.last_seen ? h("span", {class: "muted small block", text: `seen ${when(w.last_seen)}`}) : null),
      h("td", {}, statusBadge(w.status)),
      showMode ? h("td", {text: workerMode(w) || "—"}) : null,
      h("td", {}, doing),
      actionsCell,
    ));
  }
}

function applyFeatures() {
  document.querySelectorAll("[data-feature]").forEach((el) => {
    el.hidden = !state.features[el.dataset.feature];
  });
}

// --- actions ----------------------------------------------------------------------------------

function confirmAction({title, text, ok}) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok || "Do it";
  return new Promise((resolve) => {
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function act(button, work, done) {
  if (button) button.disabled = true;
  try {
    await work();
    if (done) toast(done);
  } catch (err) {
    if (err.status !== 401) toast(err.message, "error");
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

async function runJobAction(action, job, button) {
  if (action.confirm && !(await confirmAction(action.confirm(job)))) return;
  const path = `/api/v3/jobs/${encodeURIComponent(job.id)}`;
  if (action.id === "delete") {
    await act(button, () => api("DELETE", path), `Job “${job.name}” deleted.`);
    if (state.jobId === job.id) window.location.hash = "#/";
    want("jobs");
    return;
  }
  await act(button, () => api("POST", `${path}/setstatus`, {status: action.status, reason: `${action.label} from the dashboard`}),
            `Job “${job.name}”: ${action.id} requested.`);
  want("jobs", "job", "task");
}

async function setPriority(event) {
  event.preventDefault();
  const job = state.job;
  if (!job) return;
  const input = $("priority-input");
  const value = Number(input.value);
  if (!Number.isInteger(value) || value < 0 || value > 100) {
    toast("Priority must be a whole number from 0 to 100.", "error");
    input.focus();
    return;
  }
  await act(event.submitter, () => api("POST", `/api/v3/jobs/${encodeURIComponent(job.id)}/setpriority`, {priority: value}),
            `Job “${job.name}”: priority ${value}.`);
  want("jobs", "job");
}

async function requeueTask(task, button) {
  const ok = await confirmAction({title: `Requeue task “${task.name}”?`, ok: "Requeue the task",
    text: "It runs again and overwrites what it rendered before."});
  if (!ok) return;
  await act(button, () => api("POST", `/api/v3/tasks/${encodeURIComponent(task.id)}/setstatus`,
                              {status: "queued", reason: "Requeued from the dashboard"}),
            `Task “${task.name}” requeued.`);
  want("jobs", "job", "task", "log");
}

async function clearBlocklist(event) {
  const job = state.job;
  const entries = state.blocklist || [];
  if (!job || !entries.length) return;
  const ok = await confirmAction({title: `Clear the blocklist of “${job.name}”?`, ok: "Clear the blocklist",
    text: "The blocked workers may get this job's tasks again, and may fail them again."});
  if (!ok) return;
  const body = entries.map((e) => ({worker_id: e.worker_id, task_type: e.task_type}));
  await act(event.currentTarget, () => api("DELETE", `/api/v3/jobs/${encodeURIComponent(job.id)}/blocklist`, body),
            "Blocklist cleared.");
  want("blocklist", "job");
}

async function setWorkerStatus(worker, status, button) {
  await act(button, () => api("POST", `/api/v3/worker-mgt/workers/${encodeURIComponent(worker.id)}/setstatus`,
                              {status, is_lazy: false}),
            status === "asleep" ? `${worker.name} is going to sleep.` : `${worker.name} is waking up.`);
  want("workers");
}

// --- navigation ---------------------------------------------------------------------------------

function route() {
  const hash = window.location.hash;
  // Section links (#jobs, #workers, #farm) only scroll; they keep what is open.
  if (hash && !hash.startsWith("#/")) return;
  const match = /^#\/job\/([^/]+)(?:\/task\/([^/]+))?/.exec(hash);
  const jobId = match ? decodeURIComponent(match[1]) : null;
  const taskId = match && match[2] ? decodeURIComponent(match[2]) : null;
  const jobChanged = jobId !== state.jobId;
  const taskChanged = taskId !== state.taskId;
  state.jobId = jobId;
  state.taskId = taskId;
  if (jobChanged) {
    state.job = null; state.tasks = []; state.blocklist = null;
    $("blocklist").hidden = true;
    $("job-image").hidden = true;
    renderJob();
    want("job", "blocklist", "images");
  }
  if (taskChanged) {
    state.task = null;
    $("log").textContent = "";
    renderTask();
    want("task", "log");
  }
  renderJobs();
}

// Up and down arrows move between the rows of a table, as in a list.
function rowKeys(event) {
  if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
  const link = event.target.closest("a.row-link");
  if (!link) return;
  const links = [...event.currentTarget.querySelectorAll("a.row-link")];
  const next = links[links.indexOf(link) + (event.key === "ArrowDown" ? 1 : -1)];
  if (next) { event.preventDefault(); next.focus(); }
}

// --- start --------------------------------------------------------------------------------------

async function start() {
  $("priority-form").addEventListener("submit", setPriority);
  $("blocklist-clear").addEventListener("click", clearBlocklist);
  $("jobs-body").addEventListener("keydown", rowKeys);
  $("tasks-body").addEventListener("keydown", rowKeys);
  window.addEventListener("hashchange", route);
  let info = null;
  for (let attempt = 0; !info; attempt++) {
    try {
      info = await api("GET", "/web/info");
    } catch (err) {
      if (err.status === 401) return;
      setLive("lost", `Cannot reach this peer (${err.message}); retrying`);
      await new Promise((r) => setTimeout(r, STREAM_BACKOFF_MS[Math.min(attempt, STREAM_BACKOFF_MS.length - 1)]));
    }
  }
  state.info = info;
  state.features = info.features || {};
  const farm = info.farm ? `farm “${info.farm.name}”, ` : "";
  $("where").textContent = `${farm}seen from peer ${info.peer.name}`;
  document.title = `${info.peer.name} — Flamenco Peer`;
  $("logout").hidden = info.viewer !== "browser";
  applyFeatures();
  route();
  want(ALL_PARTS);
  connectStream();
}

document.addEventListener("DOMContentLoaded", start);
