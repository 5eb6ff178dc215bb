// The admin's live dashboard: one frame a second from /ws/dashboard, drawn as figures and
// two small charts per realm (throughput and errors per second; p50/p95/p99 seconds) over the
// last two minutes. Reconnects by itself.
"use strict";

(() => {
  const HISTORY = 120;
  const realms = new Map(); // name → {box, figures, series}
  let retries = 0;

  const FIGURES = [
    ["queue_depth", "queued"], ["in_flight", "in flight"], ["throughput", "queries/s"], ["errors_per_second", "errors/s"],
    ["queries_processed", "processed"], ["errors", "errors"], ["p50", "p50 s"], ["p95", "p95 s"],
    ["p99", "p99 s"], ["utilisation", "utilisation"], ["connections", "connections"], ["workers", "workers"],
  ];

  function realmBox(name) {
    if (realms.has(name)) return realms.get(name);
    const box = document.createElement("section");
    box.className = "dash-realm";
    box.dataset.realm = name;
    const title = document.createElement("h2");
    title.textContent = name;
    const list = document.createElement("dl");
    const figures = {};
    FIGURES.forEach(([key, label]) => {
      const term = document.createElement("dt");
      term.textContent = label;
      const value = document.createElement("dd");
      value.dataset.figure = key;
      value.textContent = "–";
      list.append(term, value);
      figures[key] = value;
    });
    const rate = document.createElement("canvas");
    rate.setAttribute("aria-label", `${name}: queries and errors per second`);
    const latency = document.createElement("canvas");
    latency.setAttribute("aria-label", `${name}: processing time percentiles`);
    const key1 = document.createElement("p");
    key1.className = "dash-key";
    key1.textContent = "blue: queries/s · red: errors/s · grey: queued";
    const key2 = document.createElement("p");
    key2.className = "dash-key";
    key2.textContent = "p50 green · p95 orange · p99 red (seconds)";
    box.append(title, list, rate, key1, latency, key2);
    document.getElementById("dash-realms").append(box);
    const entry = { box, figures, rate, latency, series: [], last: null };
    realms.set(name, entry);
    return entry;
  }

  function show(frame) {
    const workers = document.getElementById("dash-workers");
    workers.textContent = "";
    Object.entries(frame.workers).forEach(([state, count]) => {
      const figure = document.createElement("div");
      figure.dataset.workers = state;
      figure.innerHTML = "<strong></strong><span></span>";
      figure.firstChild.textContent = count;
      figure.lastChild.textContent = state;
      workers.append(figure);
    });
    frame.realms.forEach((realm) => {
      const entry = realmBox(realm.name);
      const last = entry.last;
      const seconds = last ? Math.max(0.001, frame.at - last.at) : 1;
      const sample = {
        at: frame.at,
        processed: realm.queries_processed,
        errors: realm.errors,
        throughput: last ? Math.max(0, realm.queries_processed - last.processed) / seconds : 0,
        errors_per_second: last ? Math.max(0, realm.errors - last.errors) / seconds : 0,
        queue_depth: realm.queue_depth,
        p50: realm.processing_time.p50, p95: realm.processing_time.p95, p99: realm.processing_time.p99,
      };
      entry.last = sample;
      entry.series.push(sample);
      if (entry.series.length > HISTORY) entry.series.shift();
      const values = {
        ...realm, throughput: sample.throughput.toFixed(1), errors_per_second: sample.errors_per_second.toFixed(1),
        p50: seconds3(sample.p50), p95: seconds3(sample.p95), p99: seconds3(sample.p99),
        utilisation: `${(realm.utilisation * 100).toFixed(0)} %`,
      };
      FIGURES.forEach(([key]) => { entry.figures[key].textContent = values[key]; });
      chart(entry.rate, entry.series, [["throughput", "#2563eb"], ["errors_per_second", "#dc2626"], ["queue_depth", "#9ca3af"]]);
      chart(entry.latency, entry.series, [["p50", "#16a34a"], ["p95", "#f97316"], ["p99", "#dc2626"]]);
    });
  }

  function seconds3(value) {
    return value == null ? "–" : value.toFixed(3);
  }

  function chart(canvas, series, lines) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const context = canvas.getContext("2d");
    context.scale(ratio, ratio);
    context.clearRect(0, 0, width, height);
    const top = Math.max(1e-9, ...series.flatMap((sample) => lines.map(([key]) => sample[key] || 0)));
    context.strokeStyle = "rgba(128,128,128,.3)";
    context.strokeRect(0.5, 0.5, width - 1, height - 1);
    context.fillStyle = "rgba(128,128,128,.9)";
    context.font = "10px sans-serif";
    context.fillText(top < 10 ? top.toFixed(2) : top.toFixed(0), 4, 11);
    lines.forEach(([key, colour]) => {
      context.strokeStyle = colour;
      context.lineWidth = 1.5;
      context.beginPath();
      series.forEach((sample, index) => {
        const x = width - (series.length - 1 - index) * (width / (HISTORY - 1));
        const y = height - 2 - ((sample[key] || 0) / top) * (height - 16);
        if (index) context.lineTo(x, y); else context.moveTo(x, y);
      });
      context.stroke();
    });
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/dashboard`);
    const state = document.getElementById("dash-state");
    socket.onopen = () => { retries = 0; state.textContent = "live"; };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "dashboard") show(frame.data);
    };
    socket.onclose = () => {
      const delay = Math.min(30000, 1000 * 2 ** retries++);
      state.textContent = `disconnected · retrying in ${Math.round(delay / 1000)} s`;
      setTimeout(connect, delay);
    };
  }

  connect();
})();
