// The users' page: speaks the classic /ws protocol (docs/protocol.md §1) plus rentahal's
// additions (query_chunk, query ids), reconnects by itself, and shows sysops their panel.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // A vision image whose base64 is larger than this goes up in vision_chunk frames
  // (docs/protocol.md §1 caps a chunk at 1 MiB of base64).
  const CHUNK_CHARS = 512 * 1024;
  const WHOLE_IMAGE_CHARS = 900 * 1024;
  const FIRST_RETRY_MS = 1000;
  const LAST_RETRY_MS = 30000;
  const STATS_EVERY_MS = 5000;
  // What a speech query's card says until the broker tells what its audio was heard to say.
  const SPOKEN = "(spoken question)";

  const state = {
    socket: null,
    user: null,
    workers: [],
    pools: [],
    cards: new Map(),          // query id → card element
    counted: new Set(),        // query ids whose result is already in the totals
    waiting: new Set(),        // query ids not finished when last seen
    outbox: [],                // frames to send once connected
    upload: null,              // the vision upload in progress
    audio: null,               // base64 of the recording a speech query will send
    recorder: null,            // the MediaRecorder while the microphone records
    retries: 0,
    everConnected: false,
    banned: false,
    statsTimer: null,
  };

  // -- connection ------------------------------------------------------------------------

  function setStatus(text, kind) {
    $("status").textContent = text;
    $("status").dataset.state = kind;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    state.socket = socket;
    setStatus(state.everConnected ? "reconnecting…" : "connecting…", "connecting");
    socket.onopen = () => {
      state.retries = 0;
      setStatus("connected", "connected");
      const pending = state.outbox.splice(0);
      pending.forEach((frame) => socket.send(JSON.stringify(frame)));
    };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      const handler = handlers[frame.type];
      if (handler) handler(frame);
    };
    socket.onclose = () => {
      stopStats();
      if (state.socket !== socket) return;
      const delay = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS * 2 ** state.retries) * (0.8 + Math.random() * 0.4);
      state.retries += 1;
      const seconds = Math.max(1, Math.round(delay / 1000));
      setStatus(state.banned ? `banned · retrying in ${seconds} s` : `disconnected · retrying in ${seconds} s`, "disconnected");
      setTimeout(connect, delay);
    };
  }

  function send(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
    else state.outbox.push(frame);
  }

  // -- user and totals ---------------------------------------------------------------------

  function showUser(data) {
    const wasSysop = state.user && state.user.is_sysop;
    state.user = { ...data, total_cost: Number(data.total_cost), total_query_time: Number(data.total_query_time) };
    $("nickname").textContent = data.nickname;
    $("sysop-badge").hidden = !data.is_sysop;
    showTotals();
    $("sysop").hidden = !data.is_sysop;
    if (data.is_sysop && !wasSysop) renderWorkers();
    if (data.is_sysop) startStats();
  }

  function showTotals() {
    $("query-count").textContent = state.user.query_count;
    $("total-cost").textContent = state.user.total_cost.toFixed(4);
    $("total-time").textContent = state.user.total_query_time.toFixed(1);
  }

  function countResult(frame) {
    // user_info arrives at connect; each result after it adds what it was billed, once.
    if (!state.user || !frame.query_id || state.counted.has(frame.query_id)) return;
    state.counted.add(frame.query_id);
    state.user.query_count += 1;
    state.user.total_cost += Number(frame.cost || 0);
    state.user.total_query_time += Number(frame.processing_time || 0);
    showTotals();
  }

  function notice(text, kind = "error") {
    $("notice").textContent = text;
    $("notice").dataset.kind = kind;
    $("notice").hidden = !text;
  }

  // -- answers -----------------------------------------------------------------------------

  function card(queryId, details = {}) {
    let box = state.cards.get(queryId);
    if (!box) {
      box = document.createElement("article");
      box.className = "answer card";
      box.dataset.queryId = queryId;
      box.innerHTML = '<header class="meta"><span class="kind"></span><time></time><span class="status"></span></header>' +
        '<p class="prompt"></p><div class="body"></div><footer class="meta cost"></footer>';
      state.cards.set(queryId, box);
      placeCard(box, details.timestamp);
    }
    if (details.prompt !== undefined) showPrompt(box, details.prompt, details.query_type);
    if (details.query_type) box.querySelector(".kind").textContent = details.query_type;
    if (details.timestamp) {
      const when = new Date(details.timestamp);
      box.dataset.timestamp = when.getTime();
      const time = box.querySelector("time");
      time.dateTime = when.toISOString();
      time.textContent = when.toLocaleString();
    }
    return box;
  }

  function showPrompt(box, prompt, queryType) {
    // A speech query's prompt is the words its audio was heard to say, once it is answered.
    const line = box.querySelector(".prompt");
    const isSpoken = queryType === "speech" || box.dataset.speech === "1";
    if (isSpoken) box.dataset.speech = "1";
    line.textContent = isSpoken && !prompt ? SPOKEN : prompt;
    line.classList.toggle("heard", isSpoken && Boolean(prompt) && prompt !== SPOKEN);
  }

  function placeCard(box, timestamp) {
    // Newest first: a card from history goes after every newer one.
    box.dataset.timestamp = timestamp ? new Date(timestamp).getTime() : Date.now();
    const later = [...$("answers").children].find((other) => Number(other.dataset.timestamp) < Number(box.dataset.timestamp));
    $("answers").insertBefore(box, later || null);
  }

  function setCardStatus(box, status, text) {
    box.dataset.status = status;
    box.querySelector(".status").textContent = text || status;
  }

  function showResult(box, frame) {
    const body = box.querySelector(".body");
    body.textContent = "";
    if (frame.result_type === "image") {
      const src = frame.result.startsWith("data:") ? frame.result : "data:image/png;base64," + frame.result;
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = src;
      img.alt = "Generated image for: " + (box.querySelector(".prompt").textContent || "your prompt");
      img.className = "result-image";
      img.tabIndex = 0;
      img.addEventListener("click", () => enlarge(img));
      img.addEventListener("keydown", (event) => { if (event.key === "Enter") enlarge(img); });
      const download = document.createElement("a");
      download.href = src;
      download.download = `rentahal-${box.dataset.queryId}.png`;
      download.textContent = "Download";
      download.className = "download";
      figure.append(img, download);
      body.append(figure);
    } else if (frame.result_type === "audio") {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = frame.result.startsWith("data:") ? frame.result : "data:audio/wav;base64," + frame.result;
      body.append(audio);
    } else {
      body.append(Markdown.render(frame.result));
    }
    const parts = [];
    if (frame.processing_time != null) parts.push(`${Number(frame.processing_time).toFixed(2)} s`);
    parts.push(`cost ${Number(frame.cost || 0).toFixed(4)}`);
    if (frame.worker) parts.push(frame.worker);
    box.querySelector(".cost").textContent = parts.join(" · ");
    setCardStatus(box, "done");
  }

  function showFailure(box, message) {
    box.querySelector(".body").textContent = message;
    box.querySelector(".cost").textContent = "not charged";
    setCardStatus(box, "failed");
  }

  function enlarge(img) {
    $("lightbox-image").src = img.src;
    $("lightbox-image").alt = img.alt;
    $("lightbox").showModal();
  }

  function renderHistory(entries) {
    const finishedMeanwhile = [];
    entries.forEach((entry) => {
      const box = card(entry.query_id, entry);
      if (entry.status === "done") {
        if (box.dataset.status !== "done") showResult(box, entry);
        if (state.waiting.has(entry.query_id)) finishedMeanwhile.push(box);
        state.counted.add(entry.query_id);
        state.waiting.delete(entry.query_id);
      } else if (entry.status === "failed") {
        if (box.dataset.status !== "failed") showFailure(box, `Query failed: ${entry.error}`);
        if (state.waiting.has(entry.query_id)) finishedMeanwhile.push(box);
        state.waiting.delete(entry.query_id);
      } else {
        state.waiting.add(entry.query_id);
        if (!box.dataset.status) setCardStatus(box, entry.status, entry.status === "running" ? "running…" : "queued…");
      }
    });
    finishedMeanwhile.forEach((box) => box.classList.add("meanwhile"));
    if (finishedMeanwhile.length && state.everConnected) {
      notice(`${finishedMeanwhile.length} ${finishedMeanwhile.length === 1 ? "query" : "queries"} finished while you were away.`, "info");
    }
  }

  // -- frames from the broker ----------------------------------------------------------------

  // The operator's one-time sysop claim token (/?claim=TOKEN, `manage.py sysop_claim_token`):
  // presented once, on the first greeting, and taken out of the address bar and history.
  let claim = new URLSearchParams(location.search).get("claim");
  if (claim) history.replaceState(null, "", location.pathname);

  const handlers = {
    set_cookie: (f) => { document.cookie = `${f.name}=${f.value}; max-age=31536000; path=/; SameSite=Lax`; },
    user_info: (f) => {
      state.banned = false;
      if (state.everConnected && $("notice").dataset.kind === "banned") notice("");
      showUser(f.data);
      if (claim) { send({ type: "claim_sysop", token: claim }); claim = null; }
    },
    previous_queries: (f) => {
      renderHistory(f.data);
      state.everConnected = true;
    },
    worker_update: (f) => {
      state.workers = f.workers || [];
      state.pools = f.pools || state.pools;
      renderModelChoice();
      renderSpeechOffer();
      renderWorkers();
    },
    queue_update: (f) => {
      if (!f.query_id) return;
      const isNew = !state.cards.has(f.query_id);
      // A query another tab of this user asked: its details come with the history.
      if (isNew && !drafts.length) send({ type: "get_previous_queries" });
      const box = card(f.query_id, pendingDetails(f.query_id));
      state.waiting.add(f.query_id);
      // A place pushed just before the query started is stale once its answer streams.
      if (["done", "failed"].includes(box.dataset.status) || box.dataset.streamed === "1") return;
      if (f.status === "running") setCardStatus(box, "running", "running…");
      else setCardStatus(box, "queued", `queued · position ${f.depth} in ${f.realm || "the queue"} · ${f.total} worker${f.total === 1 ? "" : "s"}`);
      box.style.setProperty("--queue", Math.min(1, (f.depth || 0) / 10));
    },
    query_chunk: (f) => {
      const box = card(f.query_id);
      if (box.dataset.status === "done") return;
      const body = box.querySelector(".body");
      if (box.dataset.streamed !== "1") { body.textContent = ""; box.dataset.streamed = "1"; setCardStatus(box, "running", "answering…"); }
      body.append(f.chunk);
    },
    query_result: (f) => {
      const id = f.query_id || `classic-${Date.now()}`;
      if (!state.cards.has(id)) send({ type: "get_previous_queries" });
      const box = card(id);
      if (f.heard !== undefined) showPrompt(box, f.heard, "speech");
      showResult(box, f);
      state.waiting.delete(id);
      countResult(f);
    },
    error: (f) => {
      if (f.query_id) {
        showFailure(card(f.query_id), f.message);
        state.waiting.delete(f.query_id);
      } else if (state.upload && /image|upload|chunk/i.test(f.code || "")) {
        endUpload(f.message);
      } else if (f.code === "forbidden" && /banned/i.test(f.message)) {
        state.banned = true;
        notice(f.message, "banned");
      } else {
        // A refused submission: give its prompt back to edit and send again.
        const refused = drafts.shift();
        if (refused && refused.typed && !$("prompt").value) $("prompt").value = refused.typed;
        notice(f.message);
      }
    },
    user_banned: (f) => {
      if (state.user && f.guid === state.user.guid) { state.banned = true; notice("You have been banned by the sysop.", "banned"); }
      else send({ type: "get_stats" });
    },
    user_unbanned: (f) => {
      if (state.user && f.guid === state.user.guid) { state.banned = false; notice("The sysop has lifted your ban.", "info"); }
      else send({ type: "get_stats" });
    },
    query_terminated: (f) => {
      if (state.user && f.guid === state.user.guid) notice("The sysop stopped your queries.", "info");
      else send({ type: "get_stats" });
    },
    sysop_message: (f) => { $("sysop-message").textContent = "Sysop: " + f.message; $("sysop-message").hidden = false; },
    vision_chunk_received: () => sendNextChunk(),
    vision_upload_complete: () => endUpload(""),
    system_stats: (f) => renderStats(f.data),
    worker_health: (f) => renderHealth(f.data),
    active_users: (f) => renderUsers(f.users, "active"),
    user_stats: (f) => renderUsers(f.data, "all"),
    worker_alert: (f) => notice(`Worker ${f.worker} ${f.state}: ${f.reason}`, "info"),
    realm_alert: (f) => notice(`Realm ${f.realm}: ${f.state === "serving" ? "serving again" : "no healthy worker"}`, "info"),
    ping: () => send({ type: "pong" }),
  };

  // -- asking ----------------------------------------------------------------------------------

  // What was asked, in the order it was sent, until its queue_update names the query: the
  // broker answers one socket's submissions in order.
  const drafts = [];

  function pendingDetails(queryId) {
    return state.cards.has(queryId) ? {} : drafts.shift() || {};
  }

  function queryType() {
    return document.querySelector('input[name="query-type"]:checked').value;
  }

  function submit() {
    const prompt = $("prompt").value;
    const type = queryType();
    const image = $("image-preview").dataset.payload;
    notice("");
    if (type === "speech") { submitSpeech(); return; }
    if (!prompt.trim() && type !== "vision") { notice("Write a prompt first."); $("prompt").focus(); return; }
    if (type === "vision" && !image) { notice("Pick or drop an image for a vision query."); return; }
    const query = { prompt, query_type: type, model_type: "worker_node", model_name: $("model-name").value };
    drafts.push({ prompt: prompt || "(image)", typed: prompt, query_type: type, timestamp: new Date().toISOString() });
    if (type === "vision" && image.length > WHOLE_IMAGE_CHARS) {
      startUpload(query, image);
    } else {
      if (type === "vision") query.image = image;
      send({ type: "submit_query", query, idempotency_key: crypto.randomUUID() });
    }
    $("prompt").value = "";
  }

  function submitSpeech() {
    if (state.recorder) { notice("Stop the recording first."); return; }
    if (!state.audio) { notice("Record a question or pick a recording first."); return; }
    const query = {
      prompt: "", query_type: "speech", model_type: "speech", model_name: "", audio: state.audio,
      result_type: $("answer-aloud").checked ? "audio" : "text",
    };
    drafts.push({ prompt: "", typed: "", query_type: "speech", timestamp: new Date().toISOString() });
    send({ type: "submit_query", query, idempotency_key: crypto.randomUUID() });
    forgetAudio();
  }

  async function toggleRecording() {
    if (state.recorder) { state.recorder.stop(); return; }
    if (!window.MediaRecorder || !navigator.mediaDevices) { notice("This browser cannot record; pick a recording instead."); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      notice(`The microphone is not available (${error.message}); pick a recording instead.`);
      return;
    }
    const recorder = new MediaRecorder(stream);
    const pieces = [];
    recorder.ondataavailable = (event) => { if (event.data.size) pieces.push(event.data); };
    const began = Date.now();
    const showElapsed = () => {
      $("audio-hint").textContent = `Recording… ${Math.floor((Date.now() - began) / 1000)} s; press Stop when you are done.`;
    };
    const clock = setInterval(showElapsed, 250);
    recorder.onstop = () => {
      clearInterval(clock);
      stream.getTracks().forEach((track) => track.stop());
      state.recorder = null;
      $("record").textContent = "● Record";
      $("record").setAttribute("aria-label", "Record a question");
      $("record").setAttribute("aria-pressed", "false");
      useAudio(new Blob(pieces, { type: recorder.mimeType || "audio/webm" }), "your recording");
    };
    state.recorder = recorder;
    recorder.start();
    $("record").textContent = "■ Stop";
    $("record").setAttribute("aria-label", "Stop recording");
    $("record").setAttribute("aria-pressed", "true");
    showElapsed();
  }

  function useAudio(blob, name) {
    const reader = new FileReader();
    reader.onload = () => {
      state.audio = reader.result.split(",", 2)[1];
      $("audio-preview").src = reader.result;
      $("audio-preview").hidden = false;
      $("audio-hint").textContent = `${name} · ${(blob.size / 1024).toFixed(0)} KiB`;
    };
    reader.readAsDataURL(blob);
  }

  function forgetAudio() {
    state.audio = null;
    $("audio-file").value = "";
    $("audio-preview").removeAttribute("src");
    $("audio-preview").hidden = true;
    $("audio-hint").textContent = "Ask by voice: record a question or pick a recording.";
  }

  function renderSpeechOffer() {
    // Offered while a speech worker is listed and not blacklisted (the speech realm serves it).
    const isServed = state.workers.some((worker) => worker.type === "speech" && !worker.is_blacklisted);
    $("speech-type").hidden = !isServed;
    if (!isServed && queryType() === "speech") {
      document.querySelector('input[name="query-type"][value="chat"]').checked = true;
      showInputs();
    }
  }

  function showInputs() {
    const type = queryType();
    $("image-drop").hidden = type !== "vision";
    $("speech-input").hidden = type !== "speech";
    $("prompt-box").hidden = type === "speech";
    $("model-choice").hidden = type === "speech";
    renderModelChoice();
  }

  function startUpload(query, payload) {
    const total = Math.ceil(payload.length / CHUNK_CHARS);
    state.upload = { query, payload, total, next: 0, imageId: crypto.randomUUID() };
    $("upload-progress").hidden = false;
    $("upload-progress").max = total;
    $("upload-progress").value = 0;
    $("send").disabled = true;
    sendNextChunk();
  }

  function sendNextChunk() {
    const upload = state.upload;
    if (!upload) return;
    $("upload-progress").value = upload.next;
    if (upload.next >= upload.total) return;
    const start = upload.next * CHUNK_CHARS;
    send({
      type: "vision_chunk", image_id: upload.imageId, chunk_id: upload.next, total_chunks: upload.total,
      chunk_data: upload.payload.slice(start, start + CHUNK_CHARS), ...upload.query,
    });
    upload.next += 1;
  }

  function endUpload(message) {
    if (state.upload) $("upload-progress").value = state.upload.total;
    state.upload = null;
    $("send").disabled = false;
    if (message) notice(message);
  }

  function renderModelChoice() {
    const select = $("model-name");
    const chosen = select.value;
    const type = queryType();
    select.textContent = "";
    select.append(new Option("any", ""));
    const pools = state.pools.filter((pool) => pool.query_type === type);
    if (pools.length) {
      const group = document.createElement("optgroup");
      group.label = "Pools";
      pools.forEach((pool) => group.append(new Option(pool.realm ? `${pool.name} (${pool.realm})` : pool.name, pool.name)));
      select.append(group);
    }
    const workers = state.workers.filter((worker) => worker.type === type);
    if (workers.length) {
      const group = document.createElement("optgroup");
      group.label = "Workers";
      workers.forEach((worker) => {
        const option = new Option(`${worker.name}${worker.is_blacklisted ? " (unavailable)" : ` · health ${worker.health_score}`}`, worker.name);
        option.disabled = worker.is_blacklisted;
        group.append(option);
      });
      select.append(group);
    }
    select.value = [...select.options].some((option) => option.value === chosen && !option.disabled) ? chosen : "";
  }

  function pickImage(file) {
    if (!file || !file.type.startsWith("image/")) { notice("That file is not an image."); return; }
    const reader = new FileReader();
    reader.onload = () => {
      const preview = $("image-preview");
      preview.src = reader.result;
      preview.dataset.payload = reader.result.split(",", 2)[1];
      preview.hidden = false;
      $("image-hint").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KiB`;
      $("upload-progress").hidden = true;
    };
    reader.readAsDataURL(file);
  }

  // -- sysop panel -------------------------------------------------------------------------------

  function startStats() {
    if (state.statsTimer) return;
    send({ type: "get_stats" });
    state.statsTimer = setInterval(() => send({ type: "get_stats" }), STATS_EVERY_MS);
  }

  function stopStats() {
    clearInterval(state.statsTimer);
    state.statsTimer = null;
  }

  function cell(row, text) {
    const td = row.insertCell();
    td.textContent = text;
    return td;
  }

  function button(label, aria, onClick) {
    const node = document.createElement("button");
    node.type = "button";
    node.textContent = label;
    node.setAttribute("aria-label", aria);
    node.addEventListener("click", onClick);
    return node;
  }

  function renderStats(data) {
    const figures = [
      ["queries", data.total_queries], ["failed", data.failed_queries],
      ["cost", Number(data.total_cost).toFixed(4)], ["time", `${Number(data.total_processing_time).toFixed(1)} s`],
      ["online", data.online_users ?? "–"], ["workers", (data.workers || []).length],
    ];
    const box = $("system-stats");
    box.textContent = "";
    figures.forEach(([label, value]) => {
      const figure = document.createElement("div");
      figure.className = "figure";
      figure.innerHTML = "<strong></strong><span></span>";
      figure.firstChild.textContent = value;
      figure.lastChild.textContent = label;
      box.append(figure);
    });
  }

  const health = new Map();
  function renderHealth(rows) {
    health.clear();
    (rows || []).forEach((row) => health.set(row.name, row));
    renderWorkers();
  }

  function renderWorkers() {
    if (!state.user || !state.user.is_sysop) return;
    const body = $("workers-table").tBodies[0];
    body.textContent = "";
    state.workers.forEach((worker) => {
      const live = health.get(worker.name) || {};
      const row = body.insertRow();
      row.dataset.worker = worker.name;
      cell(row, worker.name);
      cell(row, worker.type);
      cell(row, worker.address || "");
      const score = cell(row, worker.is_blacklisted ? "blacklisted" : String(worker.health_score));
      score.className = worker.is_blacklisted ? "bad" : worker.health_score < 50 ? "bad" : worker.health_score < 80 ? "warn" : "good";
      cell(row, live.in_flight ?? "–");
      row.insertCell().append(button("Remove", `Remove worker ${worker.name}`, () => {
        if (confirm(`Remove worker ${worker.name}?`)) send({ type: "remove_worker", worker_name: worker.name });
      }));
    });
  }

  const users = { active: [], all: [] };
  function renderUsers(list, which) {
    users[which] = list || [];
    const online = new Set(users.active.map((user) => user.guid));
    const rows = new Map(users.all.map((user) => [user.guid, user]));
    users.active.forEach((user) => { if (!rows.has(user.guid)) rows.set(user.guid, user); });
    const body = $("users-table").tBodies[0];
    body.textContent = "";
    [...rows.values()].forEach((user) => {
      const row = body.insertRow();
      row.dataset.guid = user.guid;
      const name = cell(row, user.nickname);
      name.title = user.guid;
      cell(row, online.has(user.guid) ? "●" : "");
      cell(row, user.query_count ?? "");
      cell(row, Number(user.total_cost || 0).toFixed(4));
      cell(row, user.is_banned ? "banned" : user.is_sysop ? "sysop" : "");
      const actions = row.insertCell();
      if (state.user && user.guid === state.user.guid) return;
      actions.append(user.is_banned
        ? button("Unban", `Unban ${user.nickname}`, () => send({ type: "unban_user", user_guid: user.guid }))
        : button("Ban", `Ban ${user.nickname}`, () => send({ type: "ban_user", user_guid: user.guid })));
      actions.append(button("Terminate", `Terminate the queries of ${user.nickname}`, () => send({ type: "terminate_query", user_guid: user.guid })));
    });
  }

  // -- wiring -------------------------------------------------------------------------------------

  $("query-form").addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
  });
  document.querySelectorAll('input[name="query-type"]').forEach((radio) => radio.addEventListener("change", showInputs));
  const drop = $("image-drop");
  drop.addEventListener("click", (event) => { if (event.target !== $("image")) $("image").click(); });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("image").click(); } });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); drop.classList.remove("over"); pickImage(event.dataTransfer.files[0]); });
  $("image").addEventListener("change", () => pickImage($("image").files[0]));
  $("record").addEventListener("click", toggleRecording);
  $("audio-file").addEventListener("change", () => {
    const file = $("audio-file").files[0];
    if (file) useAudio(file, file.name);
  });
  $("lightbox").addEventListener("click", (event) => { if (event.target === $("lightbox")) $("lightbox").close(); });

  $("broadcast-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send({ type: "sysop_message", message: $("broadcast-text").value });
    $("broadcast-text").value = "";
  });
  $("add-worker-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const worker = Object.fromEntries(new FormData(event.target));
    send({ type: "add_worker", worker });
    event.target.reset();
  });

  const savedTheme = localStorage.getItem("rentahal-theme");
  if (savedTheme) document.documentElement.dataset.theme = savedTheme;
  $("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    document.documentElement.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("rentahal-theme", document.documentElement.dataset.theme);
  });

  connect();
})();
