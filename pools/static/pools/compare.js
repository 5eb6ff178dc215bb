// Charts of two pool aliases over time (the A/B comparison): health, latency, errors per
// minute, drawn plainly on canvases from the report embedded in the page.
"use strict";

(() => {
  const report = JSON.parse(document.getElementById("compare-report").textContent);
  const COLOURS = { a: "#2563eb", b: "#f97316" };
  const SERIES = {
    score: (side) => side.health_over_time.map((row) => [Date.parse(row.at), row.score]),
    latency: (side) => side.health_over_time.filter((row) => row.latency != null).map((row) => [Date.parse(row.at), row.latency]),
    errors: (side) => side.errors_over_time.map((row) => [Date.parse(row.at), row.errors]),
  };

  function draw(canvas, lines) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const context = canvas.getContext("2d");
    context.scale(ratio, ratio);
    const points = Object.values(lines).flat();
    context.strokeStyle = "rgba(128,128,128,.3)";
    context.strokeRect(0.5, 0.5, width - 1, height - 1);
    if (!points.length) {
      context.fillStyle = "rgba(128,128,128,.9)";
      context.fillText("no samples in this window", 8, 16);
      return;
    }
    const first = Math.min(...points.map(([at]) => at)), last = Math.max(...points.map(([at]) => at));
    const top = Math.max(1e-9, ...points.map(([, value]) => value));
    const x = (at) => 4 + (last === first ? 0.5 : (at - first) / (last - first)) * (width - 8);
    const y = (value) => height - 4 - (value / top) * (height - 20);
    context.fillStyle = "rgba(128,128,128,.9)";
    context.font = "10px sans-serif";
    context.fillText(top < 10 ? top.toFixed(3) : top.toFixed(0), 4, 11);
    Object.entries(lines).forEach(([side, series]) => {
      context.strokeStyle = COLOURS[side];
      context.fillStyle = COLOURS[side];
      context.lineWidth = 1.5;
      context.beginPath();
      series.forEach(([at, value], index) => (index ? context.lineTo(x(at), y(value)) : context.moveTo(x(at), y(value))));
      context.stroke();
      series.forEach(([at, value]) => context.fillRect(x(at) - 1.5, y(value) - 1.5, 3, 3));
    });
  }

  document.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
    const pick = SERIES[canvas.dataset.chart];
    draw(canvas, { a: pick(report.a), b: pick(report.b) });
  });
})();
