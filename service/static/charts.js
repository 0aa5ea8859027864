// The page's two charts, drawn on canvases (no library, no outside resource): the held-out
// score histogram of the scoring section and the training curves.  Loaded before app.js.
"use strict";

// Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi], about ``count`` of them.
function ticks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

// The held-out score histogram of ``calibration`` with the OOD threshold and the ``scored``
// images (numbered lines) on ``canvas``.
function drawHistogramOn(canvas, calibration, scored) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!calibration) return;
  const { edges, counts } = calibration.histogram;
  const finite = scored.filter((s) => typeof s === "number");
  let lo = Math.min(edges[0], ...finite), hi = Math.max(edges[edges.length - 1], ...finite);
  const pad = (hi - lo) * 0.03 || 1;
  lo -= pad; hi += pad;
  const L = 40, R = canvas.width - 12, T = 34, B = canvas.height - 34;  // the plot area
  const x = (v) => L + ((v - lo) / (hi - lo)) * (R - L);
  const top = Math.max(...counts) || 1;
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#9ab";
  counts.forEach((c, i) => {
    const x0 = x(edges[i]), x1 = x(edges[i + 1]);
    const h = (c / top) * (B - T);
    ctx.fillRect(x0, B - h, Math.max(1, x1 - x0 - 1), h);
  });
  // axes: x ticks with values, the count scale on the left
  ctx.strokeStyle = "#555"; ctx.fillStyle = "#333"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(L, B); ctx.lineTo(R, B); ctx.moveTo(L, T); ctx.lineTo(L, B); ctx.stroke();
  ctx.textAlign = "center";
  for (const v of ticks(lo, hi, 8)) {
    ctx.beginPath(); ctx.moveTo(x(v), B); ctx.lineTo(x(v), B + 4); ctx.stroke();
    ctx.fillText(String(v), x(v), B + 15);
  }
  ctx.fillText("score (higher: more like the training data)", (L + R) / 2, B + 29);
  ctx.textAlign = "right";
  ctx.fillText(String(Math.round(top)), L - 4, T + 4);  // counts from quantiles: fractional
  ctx.fillText("0", L - 4, B);
  ctx.save(); ctx.translate(10, (T + B) / 2); ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center"; ctx.fillText("images", 0, 0); ctx.restore();
  // the threshold, with its value, above the plot
  const xt = x(calibration.threshold);
  ctx.strokeStyle = "#c00"; ctx.fillStyle = "#c00"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(xt, T - 4); ctx.lineTo(xt, B); ctx.stroke();
  ctx.textAlign = xt > (L + R) / 2 ? "right" : "left";
  ctx.fillText(`OOD threshold ${calibration.threshold.toFixed(2)}`, xt + (xt > (L + R) / 2 ? -4 : 4), 12);
  // the user's images: a line each, numbered; a label moves down a row when it would touch
  // another label
  ctx.strokeStyle = "#03c"; ctx.fillStyle = "#03c"; ctx.lineWidth = 1; ctx.textAlign = "left";
  const placed = [];  // [row, x0, x1]
  scored.forEach((s, i) => {
    if (typeof s !== "number") return;
    const xs = x(s), label = String(i + 1), w = ctx.measureText(label).width + 4;
    let row = 0;
    while (placed.some(([r, a, b]) => r === row && xs < b && xs + w > a)) row += 1;
    placed.push([row, xs, xs + w]);
    ctx.beginPath(); ctx.moveTo(xs, T + row * 12); ctx.lineTo(xs, B); ctx.stroke();
    ctx.fillText(label, xs + 2, T + 9 + row * 12);
  });
}

// Training curves, ``series``: name -> [[step, value], ...], in two panels on ``canvas``.
function drawCurvesOn(canvas, series) {
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

