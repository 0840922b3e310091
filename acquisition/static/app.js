// The technician's page: plain JS, no external resources.
// Talks to the station's JSON API (same origin, session cookie) and follows
// the live status through Server-Sent Events (/api/events).
"use strict";

const $ = (id) => document.getElementById(id);
const HOLD_PERIOD_MS = 80; // keep-alive period: well under the board's 250 ms hold timeout
let examId = null;
let exam = null;
let source = null;
let holdTimer = null;

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (r.status === 401 && path !== "/api/login") showLogin();
  if (!r.ok) throw Object.assign(new Error((data && data.detail) || r.statusText), { status: r.status });
  return data;
}

function say(msg) { $("message").textContent = msg || ""; }
function fmt(v, d = 2) { return v === null || v === undefined ? "—" : (typeof v === "number" ? +v.toFixed(d) : String(v)); }

// ------------------------------------------------------------------ session
function showLogin() {
  $("login-panel").hidden = false;
  $("station").hidden = true;
  $("who").hidden = true;
  if (source) { source.close(); source = null; }
}

async function start() {
  try {
    const me = await api("GET", "/api/me");
    $("who-name").textContent = `${me.username} (${me.role})`;
    $("who").hidden = false;
    $("login-panel").hidden = true;
    $("station").hidden = false;
    connect();
    await refreshList();
    const st = await api("GET", "/api/status");
    renderStatus(st);
    if (st.active_exam) await select(st.active_exam);
  } catch (e) {
    if (e.status !== 401) $("login-error").textContent = e.message;
  }
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("POST", "/api/login", { username: $("login-user").value, password: $("login-password").value });
    $("login-password").value = "";
    await start();
  } catch (e) { $("login-error").textContent = e.message; }
});

$("logout").addEventListener("click", async () => { try { await api("POST", "/api/logout"); } finally { showLogin(); } });

// ------------------------------------------------------------------ live status
function connect() {
  if (source) source.close();
  source = new EventSource("/api/events");
  source.addEventListener("status", (m) => renderStatus(JSON.parse(m.data)));
  source.addEventListener("exam", (m) => {
    const d = JSON.parse(m.data);
    if (d.exam_id === examId) select(examId);
    refreshList();
  });
  source.addEventListener("progress", (m) => {
    const d = JSON.parse(m.data);
    if (d.exam_id !== examId) return;
    const li = document.createElement("li");
    li.textContent = `${new Date(d.time * 1000).toLocaleTimeString()} ${d.message}`;
    $("progress").prepend(li);
  });
  source.addEventListener("cage_check", (m) => {
    const d = JSON.parse(m.data);
    if (d.exam_id === examId) renderCageCheck(d.view, d);
  });
  source.addEventListener("overlay", (m) => {
    const d = JSON.parse(m.data);
    if (d.exam_id === examId) setImage(d.name.slice(-5, -4), d.attempt, d.name);
  });
  for (const kind of ["fault", "interlock", "hand_switch"]) {
    source.addEventListener(kind, (m) => {
      const d = JSON.parse(m.data);
      if (kind === "fault") say(`Controller fault: ${d.message}`);
    });
  }
  source.onerror = () => { $("st-controller").textContent = "station: reconnecting…"; };
}

// Simulator only: the room's inputs, so the demo can show refusals and the physical switch.
let lastStatus = null;
async function simulator(body) {
  try { renderStatus(await api("POST", "/api/simulator", body)); } catch (e) { say(e.message); }
}
for (const name of ["door", "collimator"]) {
  $(`sim-${name}`).addEventListener("click", () => {
    const closed = lastStatus && lastStatus.interlocks ? lastStatus.interlocks[name] : true;
    simulator({ interlock: name, closed: !closed });
  });
}
let simHandDown = false;
$("sim-hand").addEventListener("pointerdown", () => { simHandDown = true; simulator({ hand_switch: "expose" }); });
for (const ev of ["pointerup", "pointerleave", "pointercancel"]) {
  $("sim-hand").addEventListener(ev, () => { if (simHandDown) { simHandDown = false; simulator({ hand_switch: "off" }); } });
}

function chip(el, text, cls) { el.textContent = text; el.className = "chip " + (cls || ""); }

function renderStatus(s) {
  lastStatus = s;
  if (s.simulated !== undefined) $("sim-panel").hidden = !s.simulated;
  for (const name of ["door", "collimator"]) {
    if (s.interlocks && name in s.interlocks) $(`sim-${name}`).textContent = `${s.interlocks[name] ? "Open" : "Close"} ${name}`;
  }
  const c = s.controller || {};
  chip($("st-controller"), `controller: ${c.connected ? c.state : "not connected"}${c.fault ? " — " + c.fault : ""}`,
    !c.connected || c.fault ? "bad" : (c.state === "exposing" ? "warn" : "ok"));
  const il = $("st-interlocks");
  il.textContent = "";
  for (const [name, closed] of Object.entries(s.interlocks || {})) {
    const e = document.createElement("span");
    chip(e, `${name.replaceAll("_", " ")}: ${closed ? "closed" : "OPEN"}`, closed ? "ok" : "bad");
    e.id = `il-${name}`;
    il.append(e, " ");
  }
  chip($("st-hand"), `hand switch: ${s.hand_switch}${s.software_hold && s.software_hold !== "off" ? " (hold " + s.software_hold + ")" : ""}`,
    s.hand_switch === "off" ? "" : "warn");
  const heat = $("st-heat");
  heat.textContent = "";
  for (const [tube, pct] of Object.entries(s.tube_heat || {})) {
    const e = document.createElement("span");
    const over = pct !== null && pct >= (s.heat_limit || 80);
    chip(e, `tube ${tube} heat ${pct === null ? "?" : pct.toFixed(0) + "%"}`, over ? "bad" : "");
    heat.append(e, " ");
  }
  const det = $("st-detectors");
  det.textContent = "";
  for (const [v, d] of Object.entries(s.detectors || {})) {
    const e = document.createElement("span");
    chip(e, `detector ${v}: ${d.ready ? "ready" : "not ready"}`, d.ready ? "ok" : "");
    det.append(e, " ");
  }
}

// ------------------------------------------------------------------ exams
async function refreshList() {
  const exams = await api("GET", "/api/exams?limit=30");
  const ul = $("exam-list");
  ul.textContent = "";
  const ref = $("reg-ref");
  const keep = ref.value;
  ref.length = 1;
  for (const e of exams) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.textContent = `#${e.id} ${e.patient_id} ${e.region} — ${e.state}`;
    a.addEventListener("click", () => select(e.id));
    li.append(a);
    ul.append(li);
    if (e.state === "completed") {
      const o = document.createElement("option");
      o.value = e.id;
      o.textContent = `#${e.id} ${e.patient_id} ${e.region}`;
      ref.append(o);
    }
  }
  ref.value = keep;
}

$("register-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {
    patient_id: $("reg-pid").value.trim(),
    patient_name: $("reg-name").value.trim(),
    region: $("reg-region").value,
    series_length: +$("reg-series").value || 1,
  };
  if ($("reg-birth").value) body.birth_date = $("reg-birth").value;
  if ($("reg-ref").value) body.reference_exam_id = +$("reg-ref").value;
  const seg = $("reg-segments").value.trim();
  try {
    if (seg) body.segments = JSON.parse(seg);
    const e = await api("POST", "/api/exams", body);
    $("progress").textContent = "";
    await select(e.id);
    await refreshList();
    say("");
  } catch (e) { say(e.message); }
});

async function select(id) {
  const e = await api("GET", `/api/exams/${id}`);
  if (examId !== id) $("progress").textContent = "";
  const fresh = examId !== id || !exam || exam.state !== e.state;
  examId = id;
  exam = e;
  renderExam(fresh);
}

function renderExam(fillTechnique) {
  const e = exam;
  $("exam-title").textContent = `#${e.id} — ${e.patient_name} (${e.patient_id}), ${e.region} ${e.procedure_code}` +
    (e.reference_exam_id ? `, follow-up of #${e.reference_exam_id}` : "");
  $("exam-state").textContent = e.state;
  $("exam-state").dataset.state = e.state;
  const kept = e.attempts.filter((a) => a.status === "processed").length;
  $("exam-series").textContent = e.series_length > 1 ? `pair ${Math.min(kept + 1, e.series_length)} of ${e.series_length}` : "";
  const p = e.pacs;
  $("exam-pacs").textContent = !p ? "" : (p.status === "sent" ? `PACS: ${p.instances.length} images stored on ${p.node}` : `PACS: sending to ${p.node} failed (${p.error})`);
  const editable = e.actions.includes("set_technique");
  for (const t of ["A", "B"]) {
    for (const k of ["kv", "ma", "ms"]) {
      const inp = $(`t-${t}-${k}`);
      if (fillTechnique || !editable) inp.value = e.technique[t][k];
      inp.disabled = !editable;
    }
    $(`t-${t}-mas`).textContent = fmt(e.technique[t].ma * e.technique[t].ms / 1000, 1);
  }
  for (const b of document.querySelectorAll(".buttons button[data-action]")) {
    b.disabled = !e.actions.includes(b.dataset.action);
  }
  renderResult();
}

function lastAttempt() {
  const at = exam.attempts;
  return at.length ? at[at.length - 1] : null;
}

function renderCageCheck(view, c) {
  const el = $(`cc-${view}`);
  if (!c) { el.textContent = ""; el.className = "cc"; return; }
  el.textContent = `cage: ${c.message}` + (c.missing && c.missing.length ? ` (missing ${c.missing.slice(0, 8).join(", ")}${c.missing.length > 8 ? "…" : ""})` : "") +
    (c.latency_s !== undefined ? ` — ${Math.round(c.latency_s * 1000)} ms after the frame` : "");
  el.className = "cc " + (c.passed ? "ok" : "bad");
}

function setImage(view, attempt, name) {
  $(`img-${view}`).src = `/api/exams/${examId}/attempts/${attempt}/${name}?t=${Date.now()}`;
}

function renderResult() {
  const a = lastAttempt();
  const tb = $("checks").querySelector("tbody");
  tb.textContent = "";
  $("verdict").textContent = "—";
  $("verdict").className = "verdict";
  for (const v of ["A", "B"]) {
    renderCageCheck(v, a && a.cage_checks[v]);
    const img = $(`img-${v}`);
    if (!a) { img.removeAttribute("src"); continue; }
    if (a.status === "processed") setImage(v, a.number, `result-${v}.png`);
    else if (a.cage_checks[v]) setImage(v, a.number, `cage-${v}.png`);
    else img.removeAttribute("src");
  }
  if (a && a.result) {
    const q = a.result.qc;
    $("verdict").textContent = q.verdict.toUpperCase();
    $("verdict").className = "verdict " + q.verdict;
    for (const c of q.checks) {
      const tr = document.createElement("tr");
      for (const x of [c.code, c.view || "", fmt(c.value, 3), fmt(c.limit, 3), c.passed ? "pass" : "FAIL", c.message]) {
        const td = document.createElement("td");
        td.textContent = x;
        tr.append(td);
      }
      tr.children[4].className = c.passed ? "ok" : "bad";
      tb.append(tr);
    }
  } else if (a && a.error) {
    $("verdict").textContent = `${a.status}: ${a.error}`;
    $("verdict").className = "verdict retake";
  }
  renderMigration(a && a.migration);
  const at = $("attempts").querySelector("tbody");
  at.textContent = "";
  for (const x of exam.attempts) {
    const tr = document.createElement("tr");
    const rep = x.report || {};
    const tech = rep.tubes ? ["A", "B"].map((t) => `${t}: ${fmt(rep.tubes[t].kv, 1)} kV ${fmt(rep.tubes[t].mas, 2)} mAs`).join("; ") : "";
    const used = exam.used_attempts.includes(x.number) ? "used" : "";
    for (const v of [x.number, x.pair_index + 1, x.status, x.result ? x.result.qc.verdict : "", fmt(rep.skew_us, 1), tech, used]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    at.append(tr);
  }
}

function renderMigration(m) {
  $("migration").hidden = !m;
  if (!m) return;
  $("mig-ref").textContent = `#${exam.reference_exam_id}`;
  const tb = $("mig-table").querySelector("tbody");
  tb.textContent = "";
  const row = (k, v) => { const tr = document.createElement("tr"); for (const x of [k, v]) { const td = document.createElement("td"); td.textContent = x; tr.append(td); } tb.append(tr); };
  if (m.available === false) { row("migration", m.message); return; }
  if (m.motion) {
    row("segment", `${m.motion.segment} relative to ${m.motion.relative_to}`);
    row("translation (mm)", m.motion.translation_mm.map((x) => fmt(x, 3)).join(", "));
    row("rotation (deg)", m.motion.rotation_deg.map((x) => fmt(x, 3)).join(", "));
    row("MTPM (mm)", fmt(m.motion.mtpm_mm, 3));
  } else row("motion", "not computed (too few matched markers)");
  for (const [name, s] of Object.entries(m.segments || {})) {
    row(`${name}`, `${s.markers_matched} markers, ME ${fmt(s.mean_error_mm, 3)} mm, CN ${fmt(s.condition_number, 1)}`);
  }
  if (m.qc) row("migration QC", m.qc.verdict);
}

// ------------------------------------------------------------------ actions
function technique() {
  const t = {};
  for (const tube of ["A", "B"]) {
    t[tube] = {};
    for (const k of ["kv", "ma", "ms"]) t[tube][k] = +$(`t-${tube}-${k}`).value;
  }
  return t;
}

async function act(action) {
  if (!examId) return;
  say("");
  try {
    let e;
    if (action === "set_technique") e = await api("PUT", `/api/exams/${examId}/technique`, technique());
    else e = await api("POST", `/api/exams/${examId}/${action}`);
    exam = e;
    renderExam(false);
    if (action === "accept" || action === "cancel") refreshList();
  } catch (err) { say(err.message); }
}

for (const b of document.querySelectorAll(".buttons button[data-action]")) {
  if (b.dataset.action !== "hold") b.addEventListener("click", () => act(b.dataset.action));
}

// Hold-to-expose: a keep-alive every 80 ms while pressed; release at once when let go.
// The board is the authority: it aborts when the keep-alives stop.
const hold = $("btn-hold");
function holdStart(ev) {
  ev.preventDefault();
  if (hold.disabled || holdTimer) return;
  hold.classList.add("pressed");
  say("");
  const send = () => api("POST", `/api/exams/${examId}/hold`).catch(async (e) => {
    holdStop();
    await select(examId);
    // a hold that arrives after the exposure ended is not news; anything else is
    if (e.status !== 409 || ["ready", "registered", "armed"].includes(exam.state)) say(e.message);
  });
  send();
  holdTimer = setInterval(send, HOLD_PERIOD_MS);
}
function holdStop() {
  if (!holdTimer) return;
  clearInterval(holdTimer);
  holdTimer = null;
  hold.classList.remove("pressed");
  api("POST", `/api/exams/${examId}/release`).catch(() => {});
}
hold.addEventListener("pointerdown", holdStart);
for (const ev of ["pointerup", "pointerleave", "pointercancel"]) hold.addEventListener(ev, holdStop);
hold.addEventListener("keydown", (ev) => { if (ev.key === " " && !ev.repeat) holdStart(ev); });
hold.addEventListener("keyup", (ev) => { if (ev.key === " ") holdStop(); });
window.addEventListener("blur", holdStop);

start();
