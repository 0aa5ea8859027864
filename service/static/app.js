// The service's page: plain JavaScript, no build step, no outside resources.  Every API call
// sends the key as X-API-Key; the key lives in sessionStorage (this tab only).  Live progress
// comes from GET /jobs/{id}/events (Server-Sent Events) opened with a short-lived token, since
// EventSource cannot send headers and a key must never appear in a URL.
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

async function api(method, path, { json, body, raw } = {}) {
  const headers = { "X-API-Key": key };
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
async function useKey() {
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
}

$("key-form").addEventListener("submit", guard(async (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  $("key").value = "";
  try {
    await useKey();
  } catch (err) {
    key = "";
    sessionStorage.removeItem(KEY_SLOT);
    await useKey();
    throw err;
  }
}));

$("key-forget").addEventListener("click", guard(async () => {
  key = "";
  sessionStorage.removeItem(KEY_SLOT);
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
  $("gen-progress").value = 0;
  try {
    const job = await api("POST", "/generate", { json: body });
    generating = job.job_id;
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
    const url = await blobUrl(end.result_url);
    $("gen-grid").src = url;
    $("gen-download").href = url;
    $("gen-grid").hidden = $("gen-download").hidden = false;
    $("gen-progress").value = 1;
    $("gen-stage").textContent = `done: ${end.result_url}`;
  } finally {
    generating = null;
    $("gen-go").disabled = false;
    $("gen-cancel").disabled = true;
  }
}));

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
  let result = await api("POST", "/ood-score", { body: form });
  if (result.results === undefined) {  // 202: not done within the wait
    const end = await follow(result.job_id, {});
    if (end.status !== "succeeded") throw new Error(`scoring ${end.status}: ${end.error || ""}`);
    result = await api("GET", `/jobs/${result.job_id}/result?format=json`);
  }
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
    row.querySelector("img").src = URL.createObjectURL(files[i]);
    tbody.appendChild(row);
  });
  const [name, version] = result.model.split(":");
  calibration = result.calibrated
    ? await api("GET", `/models/${name}/calibration?version=${version}`) : null;
  $("histogram-caption").textContent = calibration
    ? `held-out scores of ${calibration.model} (${calibration.count} images); red: OOD threshold; blue: your images`
    : `${result.model} is not calibrated`;
  drawHistogram();
}

function drawHistogram() {
  const canvas = $("histogram");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!calibration) return;
  const { edges, counts } = calibration.histogram;
  const finite = scored.filter((s) => typeof s === "number");
  let lo = Math.min(edges[0], ...finite), hi = Math.max(edges[edges.length - 1], ...finite);
  const pad = (hi - lo) * 0.03 || 1;
  lo -= pad; hi += pad;
  const W = canvas.width, H = canvas.height - 20;
  const x = (v) => ((v - lo) / (hi - lo)) * W;
  const top = Math.max(...counts) || 1;
  ctx.fillStyle = "#9ab";
  counts.forEach((c, i) => {
    const x0 = x(edges[i]), x1 = x(edges[i + 1]);
    const h = (c / top) * (H - 10);
    ctx.fillRect(x0, H - h, Math.max(1, x1 - x0 - 1), h);
  });
  ctx.strokeStyle = "#c00"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(x(calibration.threshold), 0); ctx.lineTo(x(calibration.threshold), H); ctx.stroke();
  ctx.strokeStyle = "#03c"; ctx.fillStyle = "#03c"; ctx.font = "11px sans-serif";
  scored.forEach((s, i) => {
    if (typeof s !== "number") return;
    ctx.beginPath(); ctx.moveTo(x(s), 10); ctx.lineTo(x(s), H); ctx.stroke();
    ctx.fillText(String(i + 1), x(s) + 2, 10 + (i % 4) * 11);
  });
  ctx.fillStyle = "#333";
  ctx.fillText(lo.toFixed(0), 2, H + 14);
  ctx.fillText(hi.toFixed(0), W - 30, H + 14);
  ctx.fillText("score = -U(x)", W / 2 - 30, H + 14);
}

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

function drawCurves() {
  const canvas = $("train-curves");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const panels = [
    { title: "losses", keys: { dae: "#07a", decoder: "#a70" } },
    { title: "energies per dimension", keys: { data_energy: "#080", negative_energy: "#c00" } },
  ];
  const W = canvas.width, PH = canvas.height / 2;
  const steps = Object.values(series).flat().map((p) => p[0]);
  const maxStep = Math.max(1, ...steps);
  panels.forEach((panel, p) => {
    const y0 = p * PH;
    const values = Object.keys(panel.keys).flatMap((k) => (series[k] || []).map((q) => q[1]));
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.fillText(panel.title, 4, y0 + 12);
    if (!values.length) return;
    let lo = Math.min(...values), hi = Math.max(...values);
    if (hi === lo) { hi += 1; lo -= 1; }
    const X = (s) => 40 + (s / maxStep) * (W - 50);
    const Y = (v) => y0 + 18 + (1 - (v - lo) / (hi - lo)) * (PH - 30);
    ctx.fillText(hi.toPrecision(3), 2, y0 + 24);
    ctx.fillText(lo.toPrecision(3), 2, y0 + PH - 10);
    let legend = 120;
    for (const [k, colour] of Object.entries(panel.keys)) {
      const points = series[k] || [];
      ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 1.5;
      ctx.beginPath();
      points.forEach(([s, v], i) => (i ? ctx.lineTo(X(s), Y(v)) : ctx.moveTo(X(s), Y(v))));
      ctx.stroke();
      if (points.length) { ctx.fillText(k, legend, y0 + 12); legend += 110; }
    }
  });
}

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
  drawCurves();
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
      metrics: (m) => { addMetrics(m); drawCurves(); },
      grid: async (g) => {
        const figure = document.createElement("figure");
        figure.innerHTML = `<img class="train-grid" alt=""><figcaption>step ${g.step}</figcaption>`;
        $("train-grids").appendChild(figure);
        figure.querySelector("img").src = await blobUrl(g.url);
      },
    });
    if (end.status !== "succeeded") throw new Error(`training ${end.status}${end.error ? ": " + end.error : ""}`);
    const result = await api("GET", `/jobs/${job.job_id}/result?format=json`);
    const live = (series.dae || []).length + (series.data_energy || []).length;
    if (result.history && result.history.length > live) {  // the saved history has more
      series = {};
      result.history.forEach(addMetrics);
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
  select.value = chosen;
}

$("models-refresh").addEventListener("click", guard(loadModels));

guard(useKey)();
