// Descent dashboard: one study at /studies/<id> (loaded before app.js, whose helpers it uses:
// api, h, fmt, badge, when, sleep, ticks, tickLabels, TERMINAL).
//
// Every trial's curve of the objective overlaid (the best highlighted, pruned ones ending
// where they stopped with a cross), a parallel-coordinates plot of the parameters and the
// objective, the parameters' importance and the trial table. Live: polled every second while
// the study runs; each trial's metrics are read by cursor, so a poll fetches only new epochs.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const STUDY_POLL_MS = 1000;
const TRIAL_COLORS = {
  best: "#16a34a", running: "#2563eb", pruned: "#f87171", failed: "#9ca3af", other: "#94a3b8",
};

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function svgBox(id, width, height) {
  return svgEl("svg", { id, viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
}

function paramsText(params) {
  return Object.entries(params || {}).map(([k, v]) => `${k}=${valueText(v)}`).join("  ");
}

function valueText(value) {
  if (typeof value === "number") return fmt(value, Number.isInteger(value) ? undefined : 4);
  if (value === null || value === undefined) return "–";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function ended(trial) {
  return !["queued", "running"].includes(trial.status);
}

// A scale for values, from pixel `bottom` (the least) up to pixel `top`: log when they are
// all positive and span more than `decades` decades.
function scale(values, bottom, top, decades) {
  const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  const log = finite.length > 1 && finite.every((v) => v > 0) &&
    Math.log10(Math.max(...finite) / Math.min(...finite)) > decades;
  const t = (v) => (log ? Math.log10(v) : v);
  let a = Math.min(...finite.map(t)), b = Math.max(...finite.map(t));
  if (!finite.length) { a = 0; b = 1; }
  if (a === b) {
    const span = log ? 0.5 : Math.abs(a) * 0.1 || 0.5;
    a -= span; b += span;
  }
  const pad = (b - a) * 0.04;
  a -= pad; b += pad;
  const at = (v) => bottom + ((t(v) - a) / (b - a)) * (top - bottom);
  const tickValues = ticks(a, b, 4).map((v) => (log ? Number((10 ** v).toPrecision(3)) : v));
  return { at, log, ticks: tickValues.filter((v) => t(v) >= a && t(v) <= b) };
}

// ---- the page ---------------------------------------------------------------------------------

async function studyPage(app, studyId) {
  const state = {
    id: studyId, study: null, trials: [], curves: new Map(), importance: null, ended: -1,
    sort: { key: "number", desc: false },
  };
  const summary = h("section", { class: "summary", id: "study-summary" });
  const curves = h("figure", { class: "chart", id: "box-curves" },
    h("figcaption", { id: "curves-title" }, "Trials"), h("div", { class: "plot", id: "plot-curves" }));
  const importance = h("section", { class: "panel", id: "importance" });
  const parallel = h("figure", { class: "chart", id: "box-parallel" },
    h("figcaption", {}, "Parameters → objective (ended trials; green: the best, red: the worst)"),
    h("div", { class: "plot", id: "plot-parallel" }));
  const table = h("section", { class: "panel", id: "trials" });
  const note = h("p", { class: "muted", id: "live" });
  app.replaceChildren(
    h("p", {}, h("a", { href: "/studies" }, "← all studies")),
    summary, h("div", { class: "study-top" }, curves, importance), parallel, table, note,
  );
  const render = () => {
    renderStudySummary(summary, state);
    drawCurves(state);
    drawParallel(state);
    renderImportance(importance, state);
    renderTrials(table, state);
  };
  state.render = render;

  for (;;) {
    try {
      await refresh(state);
    } catch (error) {
      if (error.status === 401) return;
      if (!state.study) {
        app.replaceChildren(h("p", { class: "error" }, `Study ${studyId}: ${error.message}`));
        return;
      }
      note.textContent = "Could not refresh: " + error.message;
      await sleep(STUDY_POLL_MS);
      continue;
    }
    render();
    const done = state.study.status !== "running" && state.trials.every(ended) &&
      [...state.curves.values()].every((c) => c.complete);
    note.textContent = done ? "The study has ended." : "Updates every second while the study runs.";
    note.dataset.live = String(!done);
    if (done) return;
    await sleep(STUDY_POLL_MS);
  }
}

async function refresh(state) {
  const base = `/v1/studies/${state.id}`;
  state.study = await api(base);
  const trials = [];
  for (let cursor = null; ;) {
    const page = await api(`${base}/trials?limit=1000${cursor ? "&cursor=" + cursor : ""}`);
    trials.push(...page.items);
    if (!page.next) break;
    cursor = page.next;
  }
  state.trials = trials;
  // Each trial's epochs since the last poll; an ended trial's once they are all read.
  await Promise.all(trials.map(async (trial) => {
    let curve = state.curves.get(trial.job_id);
    if (!curve) state.curves.set(trial.job_id, (curve = { records: [], after: 0, complete: false }));
    while (!curve.complete) {
      const page = await api(`/v1/jobs/${trial.job_id}/metrics?after=${curve.after}&limit=1000`);
      curve.records.push(...page.items);
      curve.after = page.next;
      curve.complete = page.complete;
      if (page.items.length < 1000) break;
    }
  }));
  // Importance again only when another trial has ended (fANOVA takes a moment).
  const count = trials.filter((t) => ended(t) && t.value !== null).length;
  if (count !== state.ended) {
    try {
      state.importance = { params: (await api(`${base}/importance`)).params };
    } catch (error) {
      if (error.status !== 409) throw error;
      state.importance = { waiting: error.message };
    }
    state.ended = count;
  }
}

function renderStudySummary(el, state) {
  const study = state.study;
  const counts = study.trials;
  const cap = study.grid_size === null ? study.max_trials : Math.min(study.max_trials, study.grid_size);
  const done = counts.total - counts.queued - counts.running;
  const progress = study.status === "completed" ? 1 : Math.min(1, done / cap);
  const best = study.best;
  const metric = study.objective.metric;
  document.title = `Descent: ${study.name || study.id} (${study.status})`;
  const rows = [
    ["status", badge(study.status)],
    ["trials", `${done} / ${cap} ended: ${counts.succeeded} succeeded, ${counts.pruned} pruned, ` +
      `${counts.failed} failed, ${counts.cancelled} cancelled; ${counts.running} running, ` +
      `${counts.queued} queued`],
    ["objective", `${metric} (${study.objective.mode})`],
    ["best", best ? h("span", { id: "study-best" }, h("a", { href: "/jobs/" + best.job_id }, `trial #${best.number}`),
      `: ${metric} ${fmt(best.value)} at epoch ${best.epoch}  `, h("span", { class: "mono" }, paramsText(best.params)))
      : "–"],
    ["epochs", `${study.epochs.trained} trained, ${study.epochs.without_pruning} without pruning ` +
      `(${study.epochs.saved} saved)`],
    ["search", `${study.algorithm}, ${study.parallelism} at once, seed ${study.seed}; pruner ` +
      `${study.pruner.name}`],
    ["created", when(study.created_at)],
    ["finished", study.finished_at ? when(study.finished_at) : null],
    ["id", h("span", { class: "mono" }, study.id)],
  ];
  el.replaceChildren(
    h("h1", {}, study.name || "(unnamed study)"),
    h("div", { class: "progress", title: `${Math.round(progress * 100)}%` },
      h("div", { class: "bar " + (study.status === "completed" ? "succeeded" : study.status),
        style: `width: ${(progress * 100).toFixed(1)}%` })),
    h("dl", { class: "facts" }, rows.filter(([, v]) => v !== null)
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  );
}

// Frame of a chart: the axes' grid and labels, in a new <svg>; returns it.
function frame(id, width, height, pad, x, y, xLabel) {
  const svg = svgBox(id, width, height);
  const grid = svgEl("g", { class: "grid" });
  const labels = tickLabels(y.ticks);
  y.ticks.forEach((t, i) => {
    grid.append(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: y.at(t), y2: y.at(t) }));
    grid.append(svgEl("text", { x: pad.left - 6, y: y.at(t) + 4, "text-anchor": "end" }, labels[i]));
  });
  for (const t of x.ticks.filter(Number.isInteger)) {
    grid.append(svgEl("line", { x1: x.at(t), x2: x.at(t), y1: pad.top, y2: height - pad.bottom, class: "v" }));
    grid.append(svgEl("text", { x: x.at(t), y: height - pad.bottom + 16, "text-anchor": "middle" }, t));
  }
  grid.append(svgEl("text", { x: (pad.left + width - pad.right) / 2, y: height - 4,
    "text-anchor": "middle", class: "axis" }, xLabel));
  svg.append(grid);
  return svg;
}

function trialColor(trial, best) {
  if (best && trial.number === best.number) return TRIAL_COLORS.best;
  return TRIAL_COLORS[trial.status] || (trial.status === "cancelled" ? TRIAL_COLORS.failed : TRIAL_COLORS.other);
}

// Every trial's objective per epoch. data-curves on the <svg>: how many curves it draws.
function drawCurves(state) {
  const host = document.getElementById("plot-curves");
  const metric = state.study.objective.metric;
  const best = state.study.best;
  document.getElementById("curves-title").textContent = `${metric} of every trial`;
  const lines = state.trials.map((trial) => {
    const curve = state.curves.get(trial.job_id) || { records: [] };
    const points = curve.records.map((r) => [r.epoch, r.metrics[metric]])
      .filter(([, v]) => typeof v === "number" && Number.isFinite(v));
    return { trial, points };
  }).filter((line) => line.points.length);
  const width = Math.max(360, host.clientWidth || 640), height = 300;
  const pad = { left: 58, right: 14, top: 30, bottom: 34 };
  const epochs = lines.flatMap((l) => l.points.map(([e]) => e));
  const last = Math.max(1, ...epochs);
  const x = { at: (e) => pad.left + ((e - 1) / Math.max(1, last - 1)) * (width - pad.left - pad.right),
    ticks: ticks(1, last, 8) };
  const y = scale(lines.flatMap((l) => l.points.map(([, v]) => v)), height - pad.bottom, pad.top, 1.5);
  const svg = frame("chart-curves", width, height, pad, x, y, "epoch");
  svg.dataset.curves = String(lines.length);
  svg.dataset.log = String(y.log);
  if (!lines.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      "waiting for the first trial's first epoch…"));
    host.replaceChildren(svg);
    return;
  }
  // The best last, so that it is drawn over the others.
  const isBest = (line) => best && line.trial.number === best.number;
  lines.sort((a, b) => Number(isBest(a)) - Number(isBest(b)));
  for (const { trial, points } of lines) {
    const classes = ["curve", trial.status, isBest({ trial }) ? "best" : ""].join(" ").trim();
    const group = svgEl("g", { class: classes, "data-trial": trial.number, "data-job": trial.job_id,
      "data-points": points.length });
    const color = trialColor(trial, best);
    const d = points.map(([e, v], i) => `${i ? "L" : "M"}${x.at(e).toFixed(1)},${y.at(v).toFixed(1)}`).join("");
    group.append(svgEl("title", {}, `trial #${trial.number} (${trial.status}): ${metric} ` +
      `${fmt(trial.value)} at epoch ${trial.epoch}; ${paramsText(trial.params)}`));
    group.append(svgEl("path", { d, stroke: color, class: "line" }));
    if (points.length === 1) {
      group.append(svgEl("circle", { cx: x.at(points[0][0]), cy: y.at(points[0][1]), r: 2.5, fill: color }));
    }
    if (trial.status === "pruned") {
      // A cross where it stopped.
      const [e, v] = points[points.length - 1];
      const cx = x.at(e), cy = y.at(v), r = 4;
      group.append(svgEl("path", { class: "prune-mark", stroke: TRIAL_COLORS.pruned,
        d: `M${cx - r},${cy - r}L${cx + r},${cy + r}M${cx - r},${cy + r}L${cx + r},${cy - r}` }));
    }
    svg.append(group);
  }
  legend(svg, [
    best ? [`best (trial #${best.number})`, TRIAL_COLORS.best] : null,
    ["running", TRIAL_COLORS.running], ["ended", TRIAL_COLORS.other], ["pruned ×", TRIAL_COLORS.pruned],
  ].filter(Boolean), pad.left);
  host.replaceChildren(svg);
}

function legend(svg, entries, left) {
  const g = svgEl("g", { class: "legend" });
  let lx = left;
  for (const [label, color] of entries) {
    g.append(svgEl("line", { x1: lx, x2: lx + 18, y1: 12, y2: 12, stroke: color, "stroke-width": 2.5 }));
    g.append(svgEl("text", { x: lx + 24, y: 16 }, label));
    lx += 24 + 6.5 * label.length + 16;
  }
  svg.append(g);
}

// One vertical axis per parameter and one for the objective; one line per ended trial with a
// value, colored from the best (green) to the worst (red). data-lines: how many lines.
function drawParallel(state) {
  const host = document.getElementById("plot-parallel");
  const study = state.study;
  const metric = study.objective.metric;
  const trials = state.trials.filter((t) => ended(t) && t.value !== null);
  const names = [];
  for (const trial of state.trials) {
    for (const name of Object.keys(trial.params)) if (!names.includes(name)) names.push(name);
  }
  const width = Math.max(360, host.clientWidth || 900), height = 280;
  const pad = { left: 70, right: 70, top: 36, bottom: 40 };
  const svg = svgBox("chart-parallel", width, height);
  svg.dataset.lines = String(trials.length);
  if (!trials.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      "drawn as trials end…"));
    host.replaceChildren(svg);
    return;
  }
  const axes = [...names.map((name) => ({ name, value: (t) => t.params[name] })),
    { name: metric, value: (t) => t.value, objective: true }];
  const step = axes.length > 1 ? (width - pad.left - pad.right) / (axes.length - 1) : 0;
  axes.forEach((axis, i) => {
    axis.x = axes.length > 1 ? pad.left + i * step : width / 2;
    const values = trials.map(axis.value).filter((v) => v !== undefined);
    if (values.every((v) => typeof v === "number" && Number.isFinite(v))) {
      const axisScale = scale(values, height - pad.bottom, pad.top, 1.3);
      axis.at = axisScale.at;
      // A parameter's few distinct values (a choice, a grid) are labelled themselves.
      const distinct = [...new Set(values)].sort((p, q) => p - q);
      const marks = distinct.length <= 6 && !axis.objective ? distinct : axisScale.ticks;
      axis.labels = tickLabels(marks).map((label, k) => [marks[k], label]);
    } else {
      // Categories, in the order they first appear, evenly spread.
      const keys = [...new Set(values.map((v) => JSON.stringify(v)))];
      const at = (v) => pad.top + (keys.length > 1
        ? (keys.indexOf(JSON.stringify(v)) / (keys.length - 1)) * (height - pad.top - pad.bottom)
        : (height - pad.top - pad.bottom) / 2);
      axis.at = at;
      axis.labels = keys.map((k) => [JSON.parse(k), valueText(JSON.parse(k))]);
    }
  });
  const sign = study.objective.mode === "min" ? 1 : -1;
  const ranked = [...trials].sort((a, b) => sign * (a.value - b.value));
  const best = study.best;
  const isBest = (t) => best && t.number === best.number;
  const color = (t) => {
    const r = ranked.length > 1 ? ranked.indexOf(t) / (ranked.length - 1) : 0;
    return `hsl(${Math.round(120 * (1 - r))}, 70%, 45%)`;
  };
  for (const trial of [...ranked].reverse().sort((a, b) => Number(isBest(a)) - Number(isBest(b)))) {
    const d = axes.filter((axis) => axis.value(trial) !== undefined)
      .map((axis, i) => `${i ? "L" : "M"}${axis.x.toFixed(1)},${axis.at(axis.value(trial)).toFixed(1)}`)
      .join("");
    const line = svgEl("path", { d, class: "pc-line" + (isBest(trial) ? " best" : ""),
      stroke: isBest(trial) ? TRIAL_COLORS.best : color(trial), "data-trial": trial.number });
    line.append(svgEl("title", {}, `trial #${trial.number}: ${metric} ${fmt(trial.value)}; ` +
      paramsText(trial.params)));
    svg.append(line);
  }
  for (const axis of axes) {
    const g = svgEl("g", { class: "pc-axis" });
    g.append(svgEl("line", { x1: axis.x, x2: axis.x, y1: pad.top, y2: height - pad.bottom }));
    g.append(svgEl("text", { x: axis.x, y: pad.top - 14, "text-anchor": "middle", class: "name" }, axis.name));
    for (const [v, label] of axis.labels) {
      g.append(svgEl("text", { x: axis.x + 5, y: axis.at(v) + 4, class: "tick" }, label));
    }
    svg.append(g);
  }
  host.replaceChildren(svg);
}

function renderImportance(el, state) {
  const found = state.importance || { waiting: "" };
  const content = [h("h2", {}, "Parameter importance")];
  if (found.params) {
    el.dataset.state = "ready";
    const top = Math.max(...Object.values(found.params), 1e-9);
    content.push(h("div", { class: "importance" }, Object.entries(found.params).map(([name, value]) =>
      h("div", { class: "imp-row", "data-param": name, "data-value": value },
        h("span", { class: "imp-name mono" }, name),
        h("span", { class: "imp-track" }, h("span", { class: "imp-bar",
          style: `width: ${((100 * value) / top).toFixed(1)}%` })),
        h("span", { class: "num" }, fmt(value, 3))))));
    content.push(h("p", { class: "muted" }, "Optuna's fANOVA; the values sum to 1."));
  } else {
    el.dataset.state = "waiting";
    content.push(h("p", { class: "muted" }, "Not enough trials yet."),
      found.waiting ? h("p", { class: "muted small" }, found.waiting) : null);
  }
  el.replaceChildren(...content);
}

// The trial table; a click on a column's heading sorts by it (again: the other way).
function renderTrials(el, state) {
  const metric = state.study.objective.metric;
  const names = [];
  for (const trial of state.trials) {
    for (const name of Object.keys(trial.params)) if (!names.includes(name)) names.push(name);
  }
  const columns = [
    ["number", "#", (t) => t.number],
    ["status", "status", (t) => t.status],
    ["value", metric, (t) => t.value],
    ["epoch", "at epoch", (t) => t.epoch],
    ["epochs", "epochs", (t) => t.epochs],
    ...names.map((name) => ["param:" + name, name, (t) => t.params[name]]),
  ];
  const { key, desc } = state.sort;
  const get = (columns.find(([k]) => k === key) || columns[0])[2];
  const compare = (a, b) => {
    const va = get(a), vb = get(b);
    const missing = (v) => v === null || v === undefined;
    if (missing(va) || missing(vb)) return missing(va) - missing(vb);  // missing last
    const order = typeof va === "number" && typeof vb === "number" ? va - vb
      : valueText(va).localeCompare(valueText(vb), undefined, { numeric: true });
    return desc ? -order : order;
  };
  const rows = [...state.trials].sort((a, b) => compare(a, b) || a.number - b.number);
  const best = state.study.best;
  const head = h("tr", {}, columns.map(([k, label]) => h("th", {
    class: ["sortable", ["number", "value", "epoch", "epochs"].includes(k) ? "num" : ""].join(" "),
    "data-key": k,
    "aria-sort": k === key ? (desc ? "descending" : "ascending") : null,
    onclick: () => {
      state.sort = { key: k, desc: k === key ? !desc : false };
      renderTrials(el, state);
    },
  }, label, k === key ? (desc ? " ▼" : " ▲") : "")));
  const body = rows.map((t) => h("tr", {
    class: best && t.number === best.number ? "best" : null,
    "data-number": t.number, "data-status": t.status, "data-job": t.job_id,
    "data-value": t.value === null ? "" : t.value,
  },
  h("td", { class: "num" }, h("a", { href: "/jobs/" + t.job_id }, t.number)),
  h("td", {}, badge(t.status), t.stop && t.stop.reason === "pruned"
    ? h("span", { class: "muted small", title: t.stop.detail || "" }, ` at epoch ${t.stop.epoch}`) : null),
  h("td", { class: "num" }, fmt(t.value)),
  h("td", { class: "num" }, t.epoch === null ? "–" : t.epoch),
  h("td", { class: "num" }, t.epochs),
  names.map((name) => h("td", { class: "mono" }, valueText(t.params[name])))));
  el.replaceChildren(h("h2", {}, `Trials (${state.trials.length})`),
    state.trials.length
      ? h("table", { class: "trials" }, h("thead", {}, head), h("tbody", {}, body))
      : h("p", { class: "muted" }, "No trial yet."));
}

function studyRow(study) {
  const counts = study.trials;
  const best = study.best;
  return h("tr", { "data-status": study.status },
    h("td", {}, h("a", { href: "/studies/" + study.id }, study.name || "(unnamed)")),
    h("td", {}, badge(study.status)),
    h("td", { class: "num" }, `${counts.total - counts.queued - counts.running} / ${study.max_trials}`),
    h("td", { class: "num" }, best ? `${study.objective.metric} ${fmt(best.value)} (#${best.number})` : "–"),
    h("td", {}, when(study.created_at)),
    h("td", { class: "mono" }, h("a", { href: "/studies/" + study.id }, study.id.slice(0, 8))),
  );
}
