// MMBC dashboard: a snapshot, then one server-sent event per control cycle. No build step.
// Times arrive on the engine's clock (seconds); they are mapped to this browser's wall clock.
"use strict";

(function () {
  const WINDOW_S = 3600;
  const MAX_EVENTS = 100;
  const LONG_REFRESH_MS = 60000;
  const SILENT_MS = 5000; // no update for this long: the page says so

  const $ = (id) => document.getElementById(id);
  const state = {
    config: null, status: null, recent: [], long: [], offsetS: null,
    view: "recent", chart: null, chartKey: "", lastUpdateMs: 0, updates: 0,
    dirty: false,
  };

  // ---- formatting
  const fmtW = (w) => (w === null || w === undefined ? "–" : `${Math.round(w)} W`);
  const fmtPct = (p) => (p === null || p === undefined ? "–" : `${p.toFixed(0)} %`);
  const wallMs = (engineS) => (engineS + (state.offsetS || 0)) * 1000;
  const clock = (engineS) => new Date(wallMs(engineS)).toLocaleTimeString([], { hour12: false });
  const label = (text) => (text || "–").replace(/_/g, " ");

  function setText(id, text, value) {
    const el = $(id);
    el.textContent = text;
    if (value !== undefined) el.dataset.value = value === null ? "" : String(value);
  }

  function noteOffset(engineNowS) {
    // The smallest offset seen is the one with the least transport delay; a jump of the
    // wall clock (or a restarted engine) resets it.
    const offset = Date.now() / 1000 - engineNowS;
    if (state.offsetS === null || offset < state.offsetS || offset - state.offsetS > 5) {
      state.offsetS = offset;
    }
  }

  // ---- live state
  function renderStatus(s) {
    if (!s) return;
    setText("grid-power", fmtW(s.grid_w), s.grid_w);
    setText("grid-dir", s.grid_w === null ? "meter unavailable" : s.grid_w >= 0 ? "importing" : "exporting");
    setText("fleet-power", fmtW(s.battery_power_w), s.battery_power_w);
    setText("fleet-dir", s.battery_power_w === null ? "" : s.battery_power_w > 0 ? "discharging" : s.battery_power_w < 0 ? "charging" : "idle");
    setText("fleet-soc", fmtPct(s.soc_pct), s.soc_pct);
    if (state.config.has_pv) setText("pv-power", fmtW(s.pv_w), s.pv_w);
    const age = s.meter_age_s;
    setText("meter-age", age === null ? "–" : `${age.toFixed(1)} s`, age);
    const stale = s.meter_stale;
    $("meter-age").classList.toggle("stale", stale);
    setText("meter-note", stale ? "stale: batteries held at 0 W" : "fresh");
    setText("quality", label(s.quality), s.quality);
    setText("grid-rms", s.grid_rms_w === null ? "" : `grid RMS ${Math.round(s.grid_rms_w)} W over 1 min`);
    setText("fleet-state", `fleet: ${label(s.fleet_state)}`, s.fleet_state);
    setText("mode", `mode: ${label(s.mode)}`, s.mode);
    $("blocked").hidden = !s.discharge_blocked;
    $("block-toggle").textContent = s.discharge_blocked ? "Allow discharge" : "Block discharge";
    for (const b of s.batteries) renderBattery(b);
  }

  function batteryCard(name) {
    let card = document.querySelector(`.battery[data-name="${CSS.escape(name)}"]`);
    if (card) return card;
    card = document.createElement("article");
    card.className = "battery";
    card.dataset.name = name;
    card.innerHTML = `<h3><span class="name"></span><span class="state"></span></h3>
      <dl><dt>Power</dt><dd class="power"></dd><dt>Setpoint</dt><dd class="setpoint"></dd>
      <dt>SoC</dt><dd class="soc"></dd></dl><div class="soc-bar"><span></span></div>`;
    card.querySelector(".name").textContent = name.replace(/_/g, " ");
    $("batteries").appendChild(card);
    return card;
  }

  function renderBattery(b) {
    const card = batteryCard(b.name);
    card.dataset.online = String(b.online);
    card.dataset.state = b.state || "";
    card.querySelector(".state").textContent = b.online ? label(b.state) : "unavailable";
    const power = card.querySelector(".power");
    power.textContent = fmtW(b.power_w);
    power.dataset.value = b.power_w === null ? "" : String(b.power_w);
    card.querySelector(".setpoint").textContent = b.setpoint_w === null ? "not commanded" : fmtW(b.setpoint_w);
    card.querySelector(".soc").textContent = fmtPct(b.soc_pct);
    card.querySelector(".soc-bar > span").style.width = `${b.soc_pct === null ? 0 : b.soc_pct}%`;
  }

  function addEvents(events) {
    const list = $("events");
    for (const e of events) {
      const item = document.createElement("li");
      item.className = e.level;
      item.dataset.kind = e.kind;
      const time = document.createElement("time");
      time.dataset.engineS = String(e.t_s);
      time.textContent = clock(e.t_s);
      const text = document.createElement("span");
      text.textContent = e.text;
      item.append(time, text);
      list.prepend(item);
    }
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $("no-events").hidden = list.children.length > 0;
  }

  // ---- chart
  function seriesCount() { return state.config.batteries.length; }

  function chartData() {
    const columns = state.view === "recent" ? state.recent : state.long;
    const n = seriesCount();
    const width = 2 + 2 * n;
    if (!columns.length) return Array.from({ length: width }, () => []);
    const offset = state.offsetS || 0;
    return columns.map((col, i) => (i === 0 ? col.map((t) => t + offset) : col));
  }

  function makeChart() {
    const colors = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#db2777", "#0891b2"];
    const series = [{}, { label: "grid", stroke: "#6b7280", width: 2, value: (u, v) => fmtW(v) }];
    state.config.batteries.forEach((name, i) => series.push({
      label: `${name.replace(/_/g, " ")} W`, stroke: colors[i % colors.length], width: 1.5,
      value: (u, v) => fmtW(v),
    }));
    state.config.batteries.forEach((name, i) => series.push({
      label: `${name.replace(/_/g, " ")} SoC`, stroke: colors[i % colors.length], width: 1,
      dash: [6, 4], scale: "%", points: { show: false }, value: (u, v) => fmtPct(v),
    }));
    const el = $("chart");
    const opts = {
      width: Math.max(280, el.clientWidth), height: 300, series,
      scales: { "%": { range: [0, 100] } },
      axes: [
        { stroke: getComputedStyle(document.body).color },
        { label: "W", stroke: getComputedStyle(document.body).color, size: 60 },
        { scale: "%", side: 1, label: "SoC %", grid: { show: false }, stroke: getComputedStyle(document.body).color },
      ],
      legend: { live: true },
    };
    state.chart = new uPlot(opts, chartData(), el);
    new ResizeObserver(() => state.chart.setSize({ width: Math.max(280, el.clientWidth), height: 300 })).observe(el);
  }

  function redraw() {
    if (!state.dirty || !state.chart) return;
    state.dirty = false;
    state.chart.setData(chartData());
  }

  function appendPoint(point) {
    if (!state.recent.length) state.recent = point.map(() => []);
    point.forEach((v, i) => state.recent[i].push(v));
    const horizon = point[0] - WINDOW_S;
    let drop = 0;
    while (drop < state.recent[0].length && state.recent[0][drop] < horizon) drop++;
    if (drop) state.recent.forEach((col) => col.splice(0, drop));
    if (state.view === "recent") state.dirty = true;
  }

  function selectView(view) {
    state.view = view;
    $("tab-recent").setAttribute("aria-selected", String(view === "recent"));
    $("tab-long").setAttribute("aria-selected", String(view === "long"));
    state.dirty = true;
    redraw();
  }

  async function refreshLong() {
    try {
      const response = await fetch("/api/long", { cache: "no-store" });
      if (!response.ok) return;
      const history = await response.json();
      state.long = history.long;
      if (state.view === "long") state.dirty = true;
    } catch (err) { /* the stream shows the link state; try again later */ }
  }

  // ---- controls
  function initControls(config) {
    $("controls").hidden = !config.controls;
    if (!config.controls) return;
    const select = $("mode-select");
    select.replaceChildren(...config.modes.map((m) => new Option(label(m), m)));
    if (config.status) select.value = config.status.mode;
    $("mode-apply").onclick = () => send("/api/mode", { mode: select.value }, `mode set to ${label(select.value)}`);
    $("block-toggle").onclick = () => {
      const blocked = !(state.status && state.status.discharge_blocked);
      send("/api/discharge_block", { blocked }, blocked ? "discharge blocked" : "discharge allowed");
    };
  }

  async function send(path, body, done) {
    const result = $("control-result");
    const token = $("token").value;
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      result.textContent = response.ok ? `${done}; applied at the next cycle` : `refused: ${reply.error || response.status}`;
      result.dataset.ok = String(response.ok);
    } catch (err) {
      result.textContent = "the engine is not reachable";
      result.dataset.ok = "false";
    }
  }

  // ---- the stream
  function onSnapshot(snap) {
    noteOffset(snap.now_s);
    const first = state.config === null;
    state.config = snap;
    state.recent = snap.recent;
    state.long = snap.long;
    state.status = snap.status;
    $("link").dataset.state = "live";
    $("link").textContent = "live";
    $("pv-tile").hidden = !snap.has_pv;
    $("events").replaceChildren();
    addEvents(snap.events);
    renderStatus(snap.status);
    if (first) {
      initControls(snap);
      makeChart();
    }
    state.dirty = true;
    redraw();
  }

  function onStatus(message) {
    noteOffset(message.status.now_s);
    state.status = message.status;
    state.lastUpdateMs = Date.now();
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    $("link").dataset.state = "live";
    $("link").textContent = "live";
    renderStatus(message.status);
    appendPoint(message.point);
    addEvents(message.events);
    redraw();
  }

  function connect() {
    const source = new EventSource("/api/stream");
    source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
    source.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
    source.onerror = () => {
      $("link").dataset.state = "lost";
      $("link").textContent = "reconnecting…";
    };
  }

  $("tab-recent").onclick = () => selectView("recent");
  $("tab-long").onclick = () => { refreshLong().then(() => selectView("long")); };
  setInterval(redraw, 1000);
  setInterval(refreshLong, LONG_REFRESH_MS);
  setInterval(() => {
    if (state.lastUpdateMs && Date.now() - state.lastUpdateMs > SILENT_MS && $("link").dataset.state === "live") {
      $("link").dataset.state = "lost";
      $("link").textContent = "no updates from the engine";
    }
  }, 1000);
  connect();
})();
