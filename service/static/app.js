// The service's page: plain JavaScript, no build step, no outside resources.  Every API call
// sends the key as X-API-Key; the key lives in sessionStorage (this tab only).  Live progress
// comes from GET /jobs/{id}/events (Server-Sent Events) opened with a short-lived token, since
// EventSource cannot send headers and a key must never appear in a URL.  The last results
// (job ids only, never the key) are kept in localStorage and fetched again after a reload.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_SLOT = "debm-key";
let key = sessionStorage.getItem(KEY_SLOT) || "";
let session = null;
let models = null;

// --- plumbing ---------------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, { json, body, raw, withKey } = {}) {
  const headers = { "X-API-Key": withKey === undefined ? key : withKey };
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    if (Array.isArray(detail)) {
      detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    throw new Error(`${response.status}: ${detail}`);
  }
  return raw ? response : response.json();
}

async function blobUrl(path) {
  const response = await api("GET", path, { raw: true });
  return URL.createObjectURL(await response.blob());
}

function guard(fn) {
  return async (...args) => {
    showError("");
    try { await fn(...args); } catch (err) { showError(err.message || String(err)); }
  };
}

function pngData(base64) { return `data:image/png;base64,${base64}`; }

function seconds(ms) { return `${(ms / 1000).toFixed(1)} s`; }

// --- results kept across reloads: job ids by kind, newest first ----------------------------
const RESULTS_SLOT = "debm-results";
const KEEP = { generate: 1, score: 8 };

function keptJobs(kind) {
  try { return (JSON.parse(localStorage.getItem(RESULTS_SLOT)) || {})[kind] || []; }
  catch (e) { return []; }
}

function keepJob(kind, jobId, { forget = false } = {}) {
  let all = {};
  try { all = JSON.parse(localStorage.getItem(RESULTS_SLOT)) || {}; } catch (e) { /* reset */ }
  const ids = (all[kind] || []).filter((id) => id !== jobId);
  if (!forget) ids.unshift(jobId);
  all[kind] = ids.slice(0, KEEP[kind]);
  localStorage.setItem(RESULTS_SLOT, JSON.stringify(all));
}

function eta(seconds) {
  if (typeof seconds !== "number") return "";
  const s = Math.round(seconds);
  return s >= 60 ? ` · ETA ${Math.floor(s / 60)} min ${s % 60} s` : ` · ETA ${s} s`;
}

// Follow a job's event stream until its "end" event; resolves with the end event's data.
// A dropped stream reconnects (the browser sends Last-Event-ID itself); once the token has
// expired the browser gives up, and a new token resumes from the last event seen.
function follow(jobId, handlers) {
  return new Promise((resolve, reject) => {
    let lastId = null;
    let failures = 0;
    const open = async () => {
      let token;
      try {
        token = (await api("POST", `/jobs/${jobId}/events/token`)).token;
      } catch (err) { reject(err); return; }
      let url = `/jobs/${jobId}/events?token=${encodeURIComponent(token)}`;
      if (lastId) url += `&last_event_id=${encodeURIComponent(lastId)}`;
      const source = new EventSource(url);
      const on = (name, fn) => source.addEventListener(name, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        failures = 0;
        fn(JSON.parse(e.data));
      });
      for (const name of ["status", "progress", "preview", "metrics", "grid"]) {
        on(name, (data) => handlers[name] && handlers[name](data));
      }
      on("end", (data) => { source.close(); resolve(data); });
      source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) {
          failures += 1;
          if (failures > 5) reject(new Error(`lost the event stream of job ${jobId}`));
          else setTimeout(open, 500 * failures);
        }
      };
    };
    open();
  });
}

// --- key ----------------------------------------------------------------------------------
// Everything that shows what a key may see is cleared when the key changes, so the menu and
// the tables never show another key's models or results.
function clearKeyViews() {
  models = null;
  $("models-table").querySelector("tbody").innerHTML = "";
  const select = $("gen-model");
  select.innerHTML = '<option value="">enter a key to list models</option>';
  select.disabled = true;
}

async function useKey() {
  clearKeyViews();
  if (!key) {
    session = null;
    $("who").textContent = "no key (kept in this tab only)";
    document.body.classList.remove("is-admin", "has-key");
    return;
  }
  session = await api("GET", "/session");
  sessionStorage.setItem(KEY_SLOT, key);  // kept only once the service accepted it
  $("who").textContent = `key "${session.key_id}" (${session.scopes.join(", ")})`;
  document.body.classList.add("has-key");
  document.body.classList.toggle("is-admin", session.scopes.includes("admin"));
  await loadModels();
  await restoreResults();
}

// A new key replaces the current one only once the service accepted it: a mistyped key
// leaves the working one in use, and says so.
$("key-form").addEventListener("submit", guard(async (e) => {
  e.preventDefault();
  const candidate = $("key").value.trim();
  if (!candidate) return;
  try {
    await api("GET", "/session", { withKey: candidate });
  } catch (err) {
    const still = session ? `; still using key "${session.key_id}"` : "";
    throw new Error(`that key was not accepted (${err.message})${still}`);
  }
  $("key").value = "";
  if (candidate !== key) {
    key = candidate;
    clearResults();
  }
  await useKey();
}));

$("key-forget").addEventListener("click", guard(async () => {
  key = "";
  sessionStorage.removeItem(KEY_SLOT);
  clearResults();
  await useKey();
}));

// --- generate -----------------------------------------------------------------------------
let generating = null;

const STAGE_TEXT = {
  latent: "latent stage: semantic images h(z)",
  pixel: "pixel stage: refined samples",
  annealed: "annealed Langevin",
};

$("gen-form").addEventListener("submit", guard(async (e) => {
  e.preventDefault();
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = { n: number("gen-n"), seed: number("gen-seed"), sampler: $("gen-sampler").value,
                 steps_latent: number("gen-steps-latent"), steps_pixel: number("gen-steps-pixel") };
  if ($("gen-model").value) body.model = $("gen-model").value;
  $("gen-go").disabled = true;
  $("gen-grid").hidden = $("gen-download").hidden = $("gen-preview").hidden = true;
  $("gen-result").hidden = true;
  $("gen-progress").value = 0;
  const started = performance.now();
  try {
    const job = await api("POST", "/generate", { json: body });
    generating = job.job_id;
    keepJob("generate", job.job_id);
    $("gen-cancel").disabled = false;
    $("gen-stage").textContent = `job ${job.job_id.slice(0, 8)} ${job.status} (model ${job.model})`;
    const end = await follow(job.job_id, {
      status: (d) => { $("gen-stage").textContent = `job ${d.status}`; },
      progress: (d) => {
        $("gen-progress").value = d.fraction || 0;
        $("gen-stage").textContent =
          `${STAGE_TEXT[d.stage] || d.stage}: step ${d.step}/${d.total}${eta(d.eta_seconds)}`;
      },
      preview: (d) => {
        $("gen-preview").src = pngData(d.png_base64);
        $("gen-preview").hidden = false;
        $("gen-preview").dataset.stage = d.stage;
        $("gen-preview").title = `${STAGE_TEXT[d.stage] || d.stage}, step ${d.step}`;
      },
    });
    if (end.status !== "succeeded") throw new Error(`job ${end.status}${end.error ? ": " + end.error : ""}`);
    await showGrid(job.job_id);
    $("gen-stage").textContent =
      `done: ${body.n} sample${body.n === 1 ? "" : "s"} in ${seconds(performance.now() - started)}`;
  } finally {
    generating = null;
    $("gen-go").disabled = false;
    $("gen-cancel").disabled = true;
  }
}));

async function showGrid(jobId) {
  const url = await blobUrl(`/jobs/${jobId}/result`);
  $("gen-grid").src = url;
  $("gen-download").href = url;
  $("gen-grid").hidden = $("gen-download").hidden = false;
  $("gen-result").hidden = false;
  $("gen-progress").value = 1;
}

$("gen-cancel").addEventListener("click", guard(async () => {
  if (generating) await api("DELETE", `/jobs/${generating}`);
}));

// --- score --------------------------------------------------------------------------------
let calibration = null;
let scored = [];

async function scoreFiles(files) {
  files = Array.from(files).filter((f) => f.size > 0);
  if (!files.length) return;
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.name));
  const started = performance.now();
  // ?wait= asks for a job record (not the fast path), so a reload can fetch these scores again.
  let result = await api("POST", "/ood-score?wait=60", { body: form });
  keepJob("score", result.job_id);
  if (result.results === undefined) {  // 202: not done within the wait
    const end = await follow(result.job_id, {});
    if (end.status !== "succeeded") throw new Error(`scoring ${end.status}: ${end.error || ""}`);
    result = await api("GET", `/jobs/${result.job_id}/result?format=json`);
  }
  await showScores(result, files);
  $("score-status").textContent = `done: ${files.length} image${files.length === 1 ? "" : "s"} `
    + `scored in ${seconds(performance.now() - started)}`;
}

// One table row per scored image; ``files`` (the uploads) give thumbnails, a result fetched
// again after a reload has none (the service keeps no uploads).
async function showScores(result, files) {
  $("score-table").hidden = false;
  const tbody = $("score-table").querySelector("tbody");
  result.results.forEach((r, i) => {
    const index = scored.length + 1;
    scored.push(r.score);
    const verdict = r.is_ood === true ? "OOD" : r.is_ood === false ? "in-distribution" : "uncalibrated";
    const row = document.createElement("tr");
    row.className = "score-row";
    row.innerHTML = `<td>${index}</td><td><img alt=""></td><td class="filename"></td>
      <td class="score">${r.score === null ? "-" : r.score.toFixed(2)}</td>
      <td class="percentile">${r.percentile == null ? "-" : r.percentile.toFixed(1)}</td>
      <td class="verdict ${r.is_ood ? "verdict-ood" : "verdict-in"}">${verdict}</td>`;
    row.querySelector(".filename").textContent = r.filename;
    if (files) row.querySelector("img").src = URL.createObjectURL(files[i]);
    else row.querySelector("img").replaceWith("-");
    tbody.appendChild(row);
  });
  const [name, version] = result.model.split(":");
  calibration = result.calibrated
    ? await api("GET", `/models/${name}/calibration?version=${version}`) : null;
  $("histogram-caption").textContent = calibration
    ? `held-out scores of ${calibration.model} (${calibration.count} images); red: OOD threshold; blue: your images`
    : `${result.model} is not calibrated`;
  $("histogram-figure").hidden = false;
  drawHistogram();
}

function drawHistogram() { drawHistogramOn($("histogram"), calibration, scored); }

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", guard(async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  await scoreFiles(e.dataTransfer.files);
}));
$("score-files").addEventListener("change", guard(async (e) => {
  await scoreFiles(e.target.files);
  e.target.value = "";
}));

// --- train --------------------------------------------------------------------------------
let series = {};

function drawCurves() { drawCurvesOn($("train-curves"), series); }

function addMetrics(m) {
  const point = (k, v) => {
    if (typeof v !== "number" || !isFinite(v)) return;
    (series[k] = series[k] || []).push([m.step, v]);
  };
  const losses = m.losses || {};
  point("dae", losses.dae);
  point("decoder", losses.decoder);
  point("data_energy", m.data_energy);
  point("negative_energy", m.negative_energy);
}

$("train-form").addEventListener("submit", guard(async (e) => {
  e.preventDefault();
  $("train-go").disabled = true;
  series = {};
  $("train-curves-figure").hidden = true;
  $("train-grids-figure").hidden = true;
  $("train-grids").innerHTML = "";
  $("train-progress").value = 0;
  try {
    let dataset = $("train-dataset").value;
    const upload = $("train-upload").files[0];
    if (upload) {
      const form = new FormData();
      form.append("file", upload, upload.name);
      $("train-status").textContent = `uploading ${upload.name}`;
      dataset = (await api("POST", "/datasets", { body: form })).dataset_id;
    }
    const training = {};
    if ($("train-warmup").value !== "") training.warmup_steps = Number($("train-warmup").value);
    if ($("train-iters").value !== "") training.iterations = Number($("train-iters").value);
    const job = await api("POST", "/train", { json: { dataset, preset: $("train-preset").value,
      name: $("train-name").value, overrides: { training } } });
    $("train-status").textContent = `job ${job.job_id.slice(0, 8)} ${job.status}`;
    const end = await follow(job.job_id, {
      status: (d) => { $("train-status").textContent = `job ${d.status}`; },
      progress: (d) => {
        $("train-progress").value = d.fraction || 0;
        $("train-status").textContent = `${d.stage}: step ${d.step}/${d.total}${eta(d.eta_seconds)}`;
      },
      metrics: (m) => { addMetrics(m); $("train-curves-figure").hidden = false; drawCurves(); },
      grid: async (g) => {
        const figure = document.createElement("figure");
        figure.innerHTML = `<img class="train-grid" alt=""><figcaption>step ${g.step}</figcaption>`;
        $("train-grids").appendChild(figure);
        $("train-grids-figure").hidden = false;
        figure.querySelector("img").src = await blobUrl(g.url);
      },
    });
    if (end.status !== "succeeded") throw new Error(`training ${end.status}${end.error ? ": " + end.error : ""}`);
    const result = await api("GET", `/jobs/${job.job_id}/result?format=json`);
    const live = (series.dae || []).length + (series.data_energy || []).length;
    if (result.history && result.history.length > live) {  // the saved history has more
      series = {};
      result.history.forEach(addMetrics);
      $("train-curves-figure").hidden = false;
      drawCurves();
    }
    $("train-progress").value = 1;
    $("train-status").textContent = `done: ${result.model} (step ${result.step})`;
    await loadModels();
  } finally {
    $("train-go").disabled = false;
  }
}));

// --- models -------------------------------------------------------------------------------
async function loadModels() {
  models = await api("GET", "/models");
  const tbody = $("models-table").querySelector("tbody");
  tbody.innerHTML = "";
  const select = $("gen-model");
  const chosen = select.value;
  select.disabled = false;
  select.innerHTML = `<option value="">default (${models.default_model || "none"})</option>`;
  const admin = session && session.scopes.includes("admin");
  for (const m of models.models) {
    for (const v of m.versions) {
      const isDefault = v.version === m.default_version;
      const row = document.createElement("tr");
      row.dataset.model = `${m.name}:${v.version}`;
      row.innerHTML = `<td>${m.name}${m.name === models.default_model ? " (default model)" : ""}</td>
        <td>${v.version}${isDefault ? " (default)" : ""}</td><td>${v.step ?? "-"}</td>
        <td>${v.preset ?? "-"}</td><td>${v.calibrated ? "yes" : "no"}</td>
        <td>${v.created ?? ""}</td><td></td>`;
      if (admin && !isDefault) {
        const button = document.createElement("button");
        button.className = "set-default";
        button.textContent = "make default";
        button.addEventListener("click", guard(async () => {
          await api("PUT", `/models/${m.name}/default`, { json: { version: v.version } });
          await loadModels();
        }));
        row.lastElementChild.appendChild(button);
      }
      tbody.appendChild(row);
      const option = document.createElement("option");
      option.value = option.textContent = `${m.name}:${v.version}`;
      select.appendChild(option);
    }
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

// --- results kept across reloads --------------------------------------------------------
function clearResults() {
  localStorage.removeItem(RESULTS_SLOT);
  scored = [];
  calibration = null;
  $("score-table").querySelector("tbody").innerHTML = "";
  $("score-table").hidden = $("histogram-figure").hidden = true;
  $("gen-result").hidden = true;
  $("score-status").textContent = "";
}

// The kept job ids fetched again (a job another key made, or one that expired, is dropped).
async function restoreResults() {
  const [grid] = keptJobs("generate");
  if (grid && $("gen-grid").hidden) {
    try {
      const job = await api("GET", `/jobs/${grid}`);
      if (job.status === "succeeded") {
        await showGrid(grid);
        const n = (job.params || {}).n;
        const took = job.finished && job.created ? ` in ${seconds(1000 * (job.finished - job.created))}` : "";
        $("gen-stage").textContent = `last result: ${n ? n + " samples" : "samples"}${took} (${job.model || "default model"})`;
      }
    } catch (err) { keepJob("generate", grid, { forget: true }); }
  }
  if (scored.length) return;
  for (const jobId of keptJobs("score").slice().reverse()) {
    try {
      await showScores(await api("GET", `/jobs/${jobId}/result?format=json`), null);
      $("score-status").textContent = "last results, fetched again (thumbnails are not kept)";
    } catch (err) { keepJob("score", jobId, { forget: true }); }
  }
}

$("models-refresh").addEventListener("click", guard(loadModels));

guard(useKey)();
