// The admin's pool graph: pools, workers and peer brokers laid out by a small force simulation (nodes
// repel, memberships pull like springs, everything drifts to the centre), redrawn from
// graph.json every two seconds. Positions are kept across redraws, so the picture is stable.
"use strict";

(() => {
  const svg = document.getElementById("pool-graph");
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = { green: "#16a34a", yellow: "#eab308", red: "#dc2626", black: "#000000" };
  const POOL_COLOUR = "#6366f1";
  const REFRESH_MS = 2000;
  const SPRING_LENGTH = 110;
  const nodes = new Map();   // id → node with x, y, vx, vy and its SVG group
  let edges = [];
  let energy = 1;

  function size() {
    const box = svg.getBoundingClientRect();
    return { width: box.width || 800, height: box.height || 500 };
  }

  function radius(node) {
    if (node.kind === "pool") return 16;
    return (node.kind === "peer" ? 12 : 9) + 4 * Math.sqrt(node.in_flight || 0);
  }

  function describe(data) {
    if (data.kind === "pool") return `${data.label}: ${data.query_type} pool, ${data.strategy}`;
    const state = `health ${data.health_score}, ${data.in_flight} in flight` +
      (data.blacklisted_by ? `, blacklisted by ${data.blacklisted_by}` : "") +
      (data.cooldown_until ? `, cooling until ${data.cooldown_until} (${data.cooldown_reason})` : "");
    if (data.kind === "peer") return `${data.label}: peer broker serving ${data.query_types.join(", ")}; ${state}`;
    return `${data.label}: ${state}`;
  }

  function element(tag, attributes) {
    const made = document.createElementNS(NS, tag);
    Object.entries(attributes).forEach(([name, value]) => made.setAttribute(name, value));
    return made;
  }

  function update(graph) {
    const { width, height } = size();
    const seen = new Set();
    graph.nodes.forEach((data) => {
      seen.add(data.id);
      let node = nodes.get(data.id);
      if (!node) {
        node = { x: width / 2 + (Math.random() - 0.5) * width / 2, y: height / 2 + (Math.random() - 0.5) * height / 2, vx: 0, vy: 0 };
        node.group = element("g", { "data-node": data.id });
        node.shape = data.kind === "worker" ? element("circle", {}) : element("rect", {});
        node.ring = element("circle", { class: "cooling" });
        node.title = element("title", {});
        node.caption = element("text", { "text-anchor": "middle" });
        node.group.append(node.ring, node.shape, node.caption);
        node.shape.append(node.title);
        nodes.set(data.id, node);
        energy = 1;
      }
      Object.assign(node, data);
      const r = radius(node);
      const fill = node.kind === "pool" ? POOL_COLOUR : COLOURS[node.colour] || "#888";
      node.group.dataset.colour = node.kind === "pool" ? "pool" : node.colour;
      node.shape.setAttribute("fill", fill);
      if (node.kind === "pool") {
        Object.entries({ width: 2 * r, height: 2 * r, x: -r, y: -r, rx: 4 }).forEach(([k, v]) => node.shape.setAttribute(k, v));
      } else if (node.kind === "peer") {
        // A diamond: a square turned on its corner.
        const side = r * Math.SQRT2;
        Object.entries({ width: side, height: side, x: -side / 2, y: -side / 2, rx: 2, transform: "rotate(45)" })
          .forEach(([k, v]) => node.shape.setAttribute(k, v));
      } else {
        node.shape.setAttribute("r", r);
      }
      node.ring.setAttribute("r", r + 5);
      node.ring.style.display = node.cooldown_until ? "" : "none";
      node.group.dataset.cooling = node.cooldown_until ? "1" : "";
      node.caption.setAttribute("y", r + 14);
      node.caption.textContent = data.label;
      node.title.textContent = describe(data);
    });
    [...nodes.keys()].filter((id) => !seen.has(id)).forEach((id) => { nodes.get(id).group.remove(); nodes.delete(id); energy = 1; });
    if (edges.length !== graph.edges.length) energy = 1;
    edges.forEach((edge) => edge.line.remove());
    edges = graph.edges.filter((edge) => nodes.has(edge.source) && nodes.has(edge.target)).map((edge) => ({
      ...edge, line: element("line", { "data-edge": `${edge.source}→${edge.target}` }),
    }));
    svg.replaceChildren(...edges.map((edge) => edge.line), ...[...nodes.values()].map((node) => node.group));
    draw();
  }

  function step() {
    const { width, height } = size();
    const list = [...nodes.values()];
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i], b = list[j];
        let dx = b.x - a.x, dy = b.y - a.y;
        let distance2 = dx * dx + dy * dy;
        if (distance2 < 1) { dx = Math.random(); dy = Math.random(); distance2 = 1; }
        const push = 2500 / distance2;
        const distance = Math.sqrt(distance2);
        a.vx -= push * dx / distance; a.vy -= push * dy / distance;
        b.vx += push * dx / distance; b.vy += push * dy / distance;
      }
    }
    edges.forEach((edge) => {
      const a = nodes.get(edge.source), b = nodes.get(edge.target);
      const dx = b.x - a.x, dy = b.y - a.y;
      const distance = Math.max(1, Math.hypot(dx, dy));
      const pull = (distance - SPRING_LENGTH) * 0.02;
      a.vx += pull * dx / distance; a.vy += pull * dy / distance;
      b.vx -= pull * dx / distance; b.vy -= pull * dy / distance;
    });
    let moved = 0;
    list.forEach((node) => {
      node.vx = (node.vx + (width / 2 - node.x) * 0.005) * 0.6;
      node.vy = (node.vy + (height / 2 - node.y) * 0.005) * 0.6;
      node.x = Math.min(width - 20, Math.max(20, node.x + node.vx));
      node.y = Math.min(height - 30, Math.max(20, node.y + node.vy));
      moved += Math.abs(node.vx) + Math.abs(node.vy);
    });
    return moved / Math.max(1, list.length);
  }

  function draw() {
    edges.forEach((edge) => {
      const a = nodes.get(edge.source), b = nodes.get(edge.target);
      Object.entries({ x1: a.x, y1: a.y, x2: b.x, y2: b.y }).forEach(([k, v]) => edge.line.setAttribute(k, v.toFixed(1)));
      edge.line.setAttribute("stroke-width", Math.min(6, edge.weight));
    });
    nodes.forEach((node) => node.group.setAttribute("transform", `translate(${node.x.toFixed(1)},${node.y.toFixed(1)})`));
  }

  function animate() {
    if (energy > 0.05) {
      energy = step();
      draw();
    }
    requestAnimationFrame(animate);
  }

  async function refresh() {
    try {
      const response = await fetch(svg.dataset.source, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      update(await response.json());
      document.getElementById("graph-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      document.getElementById("graph-updated").textContent = `Could not update: ${error.message}`;
    }
    setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  animate();
})();
