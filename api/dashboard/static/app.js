// Descent dashboard: the job list at /, one job at /jobs/<id>, the study list at /studies,
// one study at /studies/<id>. No framework, no build step.
//
// The token: open the page once as /#token=<token> (a URL fragment never reaches a server,
// so no access log holds it; it is moved to sessionStorage and taken out of the address
// bar), or type it in the form shown when the API answers 401. Every
// request carries it as "Authorization: Bearer". The live stream is read with fetch rather
// than EventSource, which cannot send that header; the script resumes it with Last-Event-ID
// itself after a disconnect.
"use strict";

const TOKEN_KEY = "descent.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const COLORS = { train: "#2563eb", val: "#ea580c", other: "#7c3aed", lr: "#0f766e" };

// ---- token and API ------------------------------------------------------------------------

function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  return headers;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders({ Accept: "application/json" }) });
  if (response.status === 401) {
    showLogin();
    throw new ApiError(401, "a token is needed");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

function showLogin() {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("token-input").focus();
}

function setupLogin() {
  const form = document.getElementById("login");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = document.getElementById("token-input").value.trim();
    if (value) {
      sessionStorage.setItem(TOKEN_KEY, value);
      location.reload();
    }
  });
  const logout = document.getElementById("logout");
  logout.hidden = !sessionStorage.getItem(TOKEN_KEY);
  logout.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
}

// ---- small DOM helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && digits === undefined) return String(value);
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) {
    return value.toExponential(2);
  }
  return value.toFixed(digits === undefined ? 4 : digits);
}

function when(stamp) {
  if (!stamp) return "–";
  const date = new Date(stamp);
  return date.toLocaleString();
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function badge(status) {
  return h("span", { class: "badge " + status }, status);
}

function totalEpochs(job) {
  return ((job.spec || {}).training || {}).epochs || null;
}

function bestText(job) {
  const best = job.best || {};
  if (best.epoch === null || best.epoch === undefined) return "–";
  return `${best.metric} ${fmt(best.value)} @ ${best.epoch}`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- the lists -------------------------------------------------------------------------------

// A table refreshed every 2 seconds from `path` (a page of `items`); data-rows on the table
// says how many rows it shows.
async function listPage(app, { title, path, columns, numeric, row, empty }) {
  document.title = `Descent: ${title.toLowerCase()}`;
  const body = h("tbody");
  const table = h(
    "table", { class: "list", id: title.toLowerCase() },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: numeric.includes(c) ? "num" : null }, c)))),
    body,
  );
  const note = h("p", { class: "muted" }, "Updates every 2 seconds.");
  app.replaceChildren(h("h1", {}, title), table, note);

  for (;;) {
    try {
      const page = await api(path);
      body.replaceChildren(...page.items.map(row));
      if (!page.items.length) {
        body.replaceChildren(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)));
      }
      table.dataset.rows = String(page.items.length);
    } catch (error) {
      if (error.status === 401) return;
      note.textContent = `Could not load the ${title.toLowerCase()}: ${error.message}`;
    }
    await sleep(2000);
  }
}

function jobsPage(app) {
  return listPage(app, {
    title: "Jobs", path: "/v1/jobs?limit=100", row: jobRow,
    columns: ["name", "status", "epoch", "best", "created", "id"], numeric: ["epoch", "best"],
    empty: "No jobs yet. Submit one with `descent submit job.yaml`.",
  });
}

function studiesPage(app) {
  return listPage(app, {
    title: "Studies", path: "/v1/studies?limit=100", row: studyRow,
    columns: ["name", "status", "trials", "best", "created", "id"], numeric: ["trials", "best"],
    empty: "No studies yet. Submit one with `descent study submit study.yaml`.",
  });
}

function jobRow(job) {
  const total = totalEpochs(job);
  return h("tr", { "data-status": job.status },
    h("td", {}, h("a", { href: "/jobs/" + job.id }, job.name || "(unnamed)"),
      job.study_id ? [" ", h("a", { href: "/studies/" + job.study_id, class: "muted" }, "(study)")] : null),
    h("td", {}, badge(job.status)),
    h("td", { class: "num" }, total ? `${job.epoch} / ${total}` : job.epoch),
    h("td", { class: "num" }, bestText(job)),
    h("td", {}, when(job.created_at)),
    h("td", { class: "mono" }, h("a", { href: "/jobs/" + job.id }, job.id.slice(0, 8))),
  );
}

// ---- one job ----------------------------------------------------------------------------------

async function jobPage(app, jobId) {
  let job;
  try {
    job = await api(`/v1/jobs/${jobId}`);
  } catch (error) {
    if (error.status !== 401) {
      app.replaceChildren(h("p", { class: "error" }, `Job ${jobId}: ${error.message}`));
    }
    return;
  }
  // The history so far, page by page: `next` is always where to continue from, and a page
  // that is complete (the job has ended) or not full (caught up) is the last one.
  const records = [];
  const PAGE = 1000;
  let after = 0;
  for (;;) {
    const page = await api(`/v1/jobs/${jobId}/metrics?after=${after}&limit=${PAGE}`);
    records.push(...page.items);
    after = page.next;
    if (page.complete || page.items.length < PAGE) break;
  }
  const state = { job, records, checkpoints: [] };

  const summary = h("section", { class: "summary", id: "summary" });
  const charts = h("section", { class: "charts" },
    chartBox("loss", "Loss: train vs validation"),
    chartBox("accuracy", "Accuracy: train vs validation"),
    chartBox("lr", "Learning rate"),
  );
  const diagnosis = h("section", { class: "panel", id: "diagnosis" });
  const checkpoints = h("section", { class: "panel", id: "checkpoints" });
  app.replaceChildren(
    h("p", {}, h("a", { href: "/" }, "← all jobs")),
    summary, charts, h("div", { class: "columns" }, diagnosis, checkpoints),
  );

  const render = () => {
    renderSummary(summary, state);
    renderCharts(state);
    renderDiagnosis(diagnosis, state.job);
    renderCheckpoints(checkpoints, state);
  };
  const refreshCheckpoints = async () => {
    try {
      state.checkpoints = (await api(`/v1/jobs/${jobId}/checkpoints`)).items;
    } catch (error) { /* shown stale; the next refresh may work */ }
  };
  await refreshCheckpoints();
  render();
  window.addEventListener("resize", () => renderCharts(state));

  // While epochs arrive, the job row (best, last) and the checkpoints are re-read at most
  // every 1.5 s; each status event carries the whole job.
  let refreshDue = null;
  const scheduleRefresh = () => {
    if (refreshDue) return;
    refreshDue = setTimeout(async () => {
      refreshDue = null;
      try { state.job = await api(`/v1/jobs/${jobId}`); } catch (error) { /* keep the last */ }
      await refreshCheckpoints();
      render();
    }, 1500);
  };
  let drawPending = false;
  const redraw = () => {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      renderSummary(summary, state);
      renderCharts(state);
    });
  };

  if (TERMINAL.has(job.status) && job.epoch <= lastEpoch(records)) return;
  const cursor = `${lastEpoch(records)}:${job.status}`;
  await follow(jobId, cursor, (event, data) => {
    if (event === "epoch") {
      if (data.epoch > lastEpoch(state.records)) state.records.push(data);
      redraw();
      scheduleRefresh();
    } else if (event === "status") {
      state.job = data;
      refreshCheckpoints().then(render);
    }
  });
}

function lastEpoch(records) {
  return records.length ? records[records.length - 1].epoch : 0;
}

// Reads /v1/jobs/<id>/events with fetch (so it can send the token), parses the event
// stream, and reconnects after a drop with Last-Event-ID set to the last id it got.
async function follow(jobId, cursor, onEvent) {
  let lastId = cursor;
  let finished = false;
  while (!finished) {
    try {
      const response = await fetch(`/v1/jobs/${jobId}/events`, {
        headers: authHeaders({ Accept: "text/event-stream", "Last-Event-ID": lastId }),
        cache: "no-store",
      });
      if (response.status === 204) return;  // ended, and we have all of it
      if (response.status === 401) { showLogin(); return; }
      if (!response.ok) throw new ApiError(response.status, response.statusText);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseEvent(block);
          if (event.id !== null) lastId = event.id;
          if (event.event && event.data) {
            const data = JSON.parse(event.data);
            onEvent(event.event, data);
            if (event.event === "status" && TERMINAL.has(data.status)) finished = true;
          }
        }
      }
    } catch (error) {
      if (error.status === 404) return;
    }
    if (!finished) await sleep(2000);
  }
}

function parseEvent(block) {
  const event = { id: null, event: null, data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") event.id = value;
    else if (field === "event") event.event = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return event;
}

function renderSummary(el, state) {
  const job = state.job;
  document.title = `Descent: ${job.name || job.id} (${job.status})`;
  const total = totalEpochs(job);
  const epoch = Math.max(job.epoch, lastEpoch(state.records));
  // A job that succeeded is done, whether it ran every epoch or stopped early.
  const progress = job.status === "succeeded" ? 1 : total ? Math.min(1, epoch / total) : 0;
  const stop = job.stop || null;
  const rows = [
    ["status", badge(job.status)],
    ["epoch", total ? `${epoch} / ${total}` : String(epoch)],
    ["best", bestText(job)],
    ["last", job.last && job.last.value !== null ? `${fmt(job.last.value)} @ ${job.last.epoch}` : "–"],
    // A failed job's stop detail is its error, shown once, in the error row.
    ["stopped", stop ? `${stop.reason}${stop.rule ? " (" + stop.rule + ")" : ""}` +
      `${stop.epoch ? " at epoch " + stop.epoch : ""}` +
      `${stop.detail && stop.detail !== job.error ? ": " + stop.detail : ""}` : null],
    ["error", job.error],
    ["study", job.study_id ? h("a", { href: "/studies/" + job.study_id }, "a trial of this study") : null],
    ["params", job.study_id && job.params ? h("span", { class: "mono" }, paramsText(job.params)) : null],
    ["created", when(job.created_at)],
    ["finished", job.finished_at ? when(job.finished_at) : null],
    ["id", h("span", { class: "mono" }, job.id)],
  ];
  el.replaceChildren(
    h("h1", {}, job.name || "(unnamed job)"),
    h("div", { class: "progress", title: `${Math.round(progress * 100)}%` },
      h("div", { class: "bar " + job.status, style: `width: ${(progress * 100).toFixed(1)}%` })),
    h("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  );
}

function chartBox(key, title) {
  return h("figure", { class: "chart", id: `box-${key}` },
    h("figcaption", {}, title), h("div", { class: "plot", id: `plot-${key}` }));
}

function renderCharts(state) {
  const { job, records } = state;
  const names = new Set();
  for (const record of records) for (const name of Object.keys(record.metrics)) names.add(name);
  const best = job.best && job.best.epoch ? job.best.epoch : null;
  const stop = job.stop && job.stop.reason === "early_stopping" ? job.stop.epoch : null;
  const monitor = job.best ? job.best.metric : "val_loss";
  // What an empty chart says: a job that ended before its first epoch never will have one.
  const empty = TERMINAL.has(job.status)
    ? `no epochs: the job ${job.status} before its first one`
    : "waiting for the first epoch…";
  const pick = (candidates) => candidates.filter((n) => names.has(n));

  let lossNames = pick(["train_loss", "val_loss"]);
  if (!lossNames.length) lossNames = [...names].filter((n) => n.endsWith("loss")).sort();
  const accNames = pick(["train_accuracy", "val_accuracy"]);
  accNames.push(...[...names].filter((n) => n.endsWith("accuracy") && !accNames.includes(n)).sort());
  drawChart("loss", records, lossNames, { best, stop, monitor, empty });
  drawChart("accuracy", records, accNames, { best, stop, monitor, empty });
  // A log scale once the rate spans more than a decade (a decaying schedule).
  const rates = records.map((r) => r.metrics.lr).filter((v) => typeof v === "number" && v > 0);
  const log = rates.length > 0 && Math.max(...rates) / Math.min(...rates) > 10;
  drawChart("lr", records, pick(["lr"]), { best: null, stop: null, monitor, log, empty });
  document.getElementById("box-accuracy").hidden = !accNames.length && records.length > 0;
}

function seriesColor(name) {
  if (name === "lr") return COLORS.lr;
  if (name.startsWith("train")) return COLORS.train;
  if (name.startsWith("val")) return COLORS.val;
  return COLORS.other;
}

// A line chart in inline SVG. data-epochs on the <svg> says how many epochs it shows.
function drawChart(key, records, names, marks) {
  const host = document.getElementById(`plot-${key}`);
  const NS = "http://www.w3.org/2000/svg";
  const width = Math.max(320, host.clientWidth || 560);
  // The legend first: its entries wrap into rows above the plot, which starts below them.
  const entries = names.map((n) => [n, seriesColor(n), ""]);
  if (marks.best) entries.push([`best (${marks.best})`, "#16a34a", "2,3"]);
  if (marks.stop) entries.push([`early stop (${marks.stop})`, "#dc2626", "6,4"]);
  const placed = [];
  let lx = 58, row = 0;
  for (const entry of entries) {
    const w = 24 + 6.5 * entry[0].length + 14;
    if (lx + w > width - 14 && lx > 58) { lx = 58; row += 1; }
    placed.push([entry, lx, 10 + row * 16]);
    lx += w;
  }
  const pad = { left: 58, right: 14, top: 28 + row * 16, bottom: 34 };
  const height = 230 + row * 16;  // every chart's plot area is as tall
  const svg = document.createElementNS(NS, "svg");
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  svg.setAttribute("id", `chart-${key}`);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.dataset.epochs = String(records.length);
  svg.dataset.series = names.join(",");

  const points = names.map((name) => records
    .map((r) => [r.epoch, r.metrics[name]])
    .filter(([, v]) => v !== null && v !== undefined && (!marks.log || v > 0)));
  const all = points.flat();
  if (!records.length || !all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      records.length ? "not reported by this job" : marks.empty));
    host.replaceChildren(svg);
    return;
  }
  const tx = (v) => (marks.log ? Math.log10(v) : v);
  let x0 = records[0].epoch, x1 = records[records.length - 1].epoch;
  if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
  let y0 = Math.min(...all.map(([, v]) => tx(v))), y1 = Math.max(...all.map(([, v]) => tx(v)));
  if (y0 === y1) { y0 -= marks.log ? 0.5 : Math.abs(y0) * 0.1 || 0.5; y1 += marks.log ? 0.5 : Math.abs(y1) * 0.1 || 0.5; }
  const margin = (y1 - y0) * 0.05;
  y0 -= margin; y1 += margin;
  const X = (v) => pad.left + ((v - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const Y = (v) => pad.top + (1 - (tx(v) - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);

  // Grid and ticks.
  const grid = s("g", { class: "grid" });
  const yTicks = ticks(y0, y1, 5);
  const yLabels = tickLabels(yTicks.map((t) => (marks.log ? Number((10 ** t).toPrecision(3)) : t)));
  yTicks.forEach((t, i) => {
    const y = pad.top + (1 - (t - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
    grid.append(s("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y }));
    grid.append(s("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end", class: "y-tick" },
      yLabels[i]));
  });
  for (const t of ticks(x0, x1, 8).filter((t) => Number.isInteger(t))) {
    const x = X(t);
    grid.append(s("line", { x1: x, x2: x, y1: pad.top, y2: height - pad.bottom, class: "v" }));
    grid.append(s("text", { x, y: height - pad.bottom + 16, "text-anchor": "middle" }, t));
  }
  grid.append(s("text", { x: (pad.left + width - pad.right) / 2, y: height - 4,
    "text-anchor": "middle", class: "axis" }, "epoch"));
  svg.append(grid);

  // Markers: best epoch (dotted green), early stop (dashed red); the legend names them.
  if (marks.stop) {
    svg.append(s("line", { x1: X(marks.stop), x2: X(marks.stop), y1: pad.top,
      y2: height - pad.bottom, class: "mark-stop" }));
  }
  if (marks.best) {
    svg.append(s("line", { x1: X(marks.best), x2: X(marks.best), y1: pad.top,
      y2: height - pad.bottom, class: "mark-best" }));
  }

  // The curves: a path per series, broken where a value is missing or not finite.
  names.forEach((name, i) => {
    let d = "", pen = "M";
    for (const record of records) {
      const v = record.metrics[name];
      if (v === null || v === undefined || (marks.log && v <= 0)) { pen = "M"; continue; }
      d += `${pen}${X(record.epoch).toFixed(1)},${Y(v).toFixed(1)}`;
      pen = "L";
    }
    svg.append(s("path", { d, class: "series", stroke: seriesColor(name), "data-name": name }));
    if (records.length <= 60) {
      for (const [e, v] of points[i]) {
        svg.append(s("circle", { cx: X(e), cy: Y(v), r: 2, fill: seriesColor(name) }));
      }
    }
  });
  if (marks.best) {
    for (const name of names.filter((n) => n === marks.monitor)) {
      const record = records.find((r) => r.epoch === marks.best);
      const v = record ? record.metrics[name] : null;
      if (v !== null && v !== undefined) {
        svg.append(s("circle", { cx: X(marks.best), cy: Y(v), r: 5, class: "best-dot" }));
      }
    }
  }

  const legend = s("g", { class: "legend" });
  for (const [[label, color, dash], x, y] of placed) {
    legend.append(s("line", { x1: x, x2: x + 18, y1: y, y2: y, stroke: color,
      "stroke-width": 2, "stroke-dasharray": dash }));
    legend.append(s("text", { x: x + 24, y: y + 4 }, label));
  }
  svg.append(legend);
  host.replaceChildren(svg);
}

// The labels of one axis's ticks, all in one notation: scientific with as many digits as
// the finest tick needs when any tick is below 1e-3 or from 1e5 up, else fixed with as
// many decimals as the finest tick needs (never 0.001 beside 9.0e-4).
function tickLabels(values) {
  const scientific = values.some((v) => v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5));
  const format = scientific ? (v, d) => v.toExponential(d) : (v, d) => v.toFixed(d);
  const exact = (d) => values.every((v) => Math.abs(Number(format(v, d)) - v) <= Math.abs(v) * 1e-9);
  let digits = scientific ? 1 : 0;
  while (digits < 8 && !exact(digits)) digits += 1;
  return values.map((v) => (v === 0 ? "0" : format(v, digits)));
}

// About `count` round tick values between lo and hi.
function ticks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((m) => m >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) {
    out.push(Number(t.toPrecision(12)));
  }
  return out;
}

function renderDiagnosis(el, job) {
  const diagnosis = job.diagnosis;
  const content = [h("h2", {}, "Diagnosis")];
  if (!diagnosis || (typeof diagnosis === "object" && !Object.keys(diagnosis).length)) {
    content.push(h("p", { class: "muted" },
      TERMINAL.has(job.status) ? "No diagnosis for this job." : "Given when the job ends."));
  } else if (diagnosis.verdict) {
    // The core's shape: a verdict with its summary, evidence, remedies and every finding.
    content.push(h("p", { class: "verdict" },
      h("span", { class: "badge verdict-" + diagnosis.verdict }, diagnosis.verdict.replace(/_/g, " ")),
      " ", diagnosis.summary || ""));
    if (diagnosis.remedies && diagnosis.remedies.length) {
      content.push(h("h3", {}, "What may help"), h("ul", {}, diagnosis.remedies.map((r) => h("li", {}, r))));
    }
    const findings = (diagnosis.findings || []).filter((f) => (f.verdict || f.name) !== diagnosis.verdict);
    if (findings.length) content.push(h("h3", {}, "Other findings"), describe(findings));
    const gap = Array.isArray(diagnosis.gap) ? diagnosis.gap.filter((v) => v !== null) : [];
    const rest = Object.fromEntries(Object.entries(diagnosis).filter(([k]) =>
      !["verdict", "summary", "remedies", "findings", "gap"].includes(k)));
    if (gap.length) rest["generalization gap (last epoch)"] = gap[gap.length - 1];
    content.push(describe(rest));
  } else {
    content.push(describe(diagnosis));
  }
  content.push(...modelFacts(job));
  el.replaceChildren(...content);
}

// The model's parameter counts and the job's warnings, shown under the diagnosis.
function modelFacts(job) {
  const out = [];
  const p = job.parameters;
  if (p && typeof p === "object") {
    const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : fmt(n));
    out.push(h("h3", {}, "Parameters"), h("p", { class: "params", id: "parameters" },
      `${count(p.trainable)} trainable, ${count(p.frozen)} frozen`));
  }
  const warnings = Array.isArray(job.warnings) ? job.warnings : [];
  if (warnings.length) {
    out.push(h("h3", {}, "Warnings"),
      h("ul", { class: "warnings", id: "warnings" }, warnings.map((w) => h("li", {}, w))));
  }
  return out;
}

function describe(value) {
  if (value === null || typeof value !== "object") return h("span", {}, fmt(value));
  if (Array.isArray(value)) {
    return h("ul", {}, value.map((v) => h("li", {}, describe(v))));
  }
  return h("dl", { class: "facts" }, Object.entries(value).map(([k, v]) =>
    [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, describe(v))]));
}

function renderCheckpoints(el, state) {
  const items = state.checkpoints;
  const rows = items.map((c) => h("tr", {},
    h("td", { class: "num" }, c.epoch),
    h("td", { class: "num" }, fmt(c.value)),
    h("td", {}, [c.is_best ? "best" : "", c.is_last ? "last" : ""].filter(Boolean).join(", ")),
    h("td", { class: "num" }, bytes(c.bytes)),
    h("td", { class: "mono", title: c.sha256 }, c.sha256.slice(0, 12)),
    h("td", {}, h("a", {
      href: `/v1/checkpoints/${c.id}`, class: "download",
      onclick: (event) => { event.preventDefault(); download(c, state.job); },
    }, "download")),
  ));
  el.replaceChildren(
    h("h2", {}, "Checkpoints"),
    items.length
      ? h("table", { class: "checkpoints" },
        h("thead", {}, h("tr", {}, ["epoch", "value", "", "size", "sha256", ""].map((c) =>
          h("th", { class: ["epoch", "value", "size"].includes(c) ? "num" : null }, c)))),
        h("tbody", {}, rows))
      : h("p", { class: "muted" }, "None yet."),
  );
}

// Downloads go through fetch, so that they carry the token, then are saved from a blob.
async function download(checkpoint, job) {
  const response = await fetch(`/v1/checkpoints/${checkpoint.id}`, { headers: authHeaders() });
  if (!response.ok) {
    alert(`Download failed: ${response.status} ${response.statusText}`);
    return;
  }
  const blob = await response.blob();
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  const name = match ? match[1] : `${job.name || job.id}-epoch${checkpoint.epoch}.safetensors`;
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- start ------------------------------------------------------------------------------------

function main() {
  takeTokenFromUrl();
  setupLogin();
  const app = document.getElementById("app");
  const path = location.pathname;
  const job = /^\/jobs\/([^/]+)\/?$/.exec(path);
  const study = /^\/studies\/([^/]+)\/?$/.exec(path);
  if (job) jobPage(app, decodeURIComponent(job[1]));
  else if (study) studyPage(app, decodeURIComponent(study[1]));
  else if (/^\/studies\/?$/.test(path)) studiesPage(app);
  else jobsPage(app);
}

main();
