// The soundtrack web page: upload or pick a video, set the sampler, run it as a job (progress,
// cancel), play / download / decode the result, draw its mel-spectrogram with the video's rhythm
// and the music's beats; a second view browses the searches, benches and registry cards.
// Everything it loads comes from this service (no CDN; the Content-Security-Policy enforces it).
// window.soundtrackPage exposes what the page measured (decoded audio, drawing) for tests.
"use strict";

(function () {
  // The app's root URL: this script is served at <root>ui/app.js.
  const ROOT = document.currentScript.src.replace(/ui\/app\.js(\?.*)?$/, "");
  const POLL_MS = 400;
  const $ = (id) => document.getElementById(id);
  const page = (window.soundtrackPage = { job: null, states: [], decoded: null, drawn: null, error: null });

  const state = { video: null, videoName: null, model: null, fields: [], jobUrl: null, timer: null, urls: [] };

  function url(path) { return ROOT + path.replace(/^\//, ""); }

  async function getJson(path, opts) {
    const r = await fetch(url(path), opts);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const msg = body && body.message ? body.message : `HTTP ${r.status}`;
      const err = new Error(msg); err.status = r.status; err.body = body; throw err;
    }
    return body;
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
    if (isError) page.error = text;
  }

  function blobUrl(blob) { const u = URL.createObjectURL(blob); state.urls.push(u); return u; }

  function releaseUrls() { state.urls.forEach((u) => URL.revokeObjectURL(u)); state.urls = []; }

  // ---------------------------------------------------------------- views
  function showView(name) {
    document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + name; });
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.view === name));
    if (name === "runs") loadRuns();
  }

  // ---------------------------------------------------------------- the form, from the OpenAPI description
  // Every form field of POST /v1/jobs except the video becomes a control; the method's controls
  // (reference tracks, style prompts, objectives) appear here as the API gains them.
  function buildForm(schema, model) {
    const form = $("options");
    form.textContent = "";
    state.fields = [];
    const conds = new Set(model.conditions || []);
    const props = schema.properties || {};
    for (const [name, p] of Object.entries(props)) {
      if (name === "video") continue;
      // weights and prompts of conditions this model does not have are not offered
      if (name.startsWith("weight_") && !conds.has(name.slice(7))) continue;
      if (name === "prompt" && !conds.has("text")) continue;
      const label = document.createElement("label");
      const title = document.createElement("span");
      title.textContent = name.replace(/_/g, " ");
      label.appendChild(title);
      let input;
      const t = Array.isArray(p.type) ? p.type.find((x) => x !== "null") : p.type;
      if (p.enum || (p.anyOf && p.anyOf.some((a) => a.enum))) {
        input = document.createElement("select");
        const values = p.enum || [].concat(...p.anyOf.filter((a) => a.enum).map((a) => a.enum));
        for (const v of values) { const o = document.createElement("option"); o.value = o.textContent = v; input.appendChild(o); }
        if (p.default !== undefined && p.default !== null) input.value = p.default;
      } else if (p.format === "binary") {
        input = document.createElement("input"); input.type = "file";
      } else if (t === "number" || t === "integer") {
        input = document.createElement("input"); input.type = "number";
        if (p.minimum !== undefined) input.min = p.minimum;
        if (p.maximum !== undefined) input.max = p.maximum;
        input.step = t === "integer" ? "1" : "any";
        if (p.default !== undefined && p.default !== null) input.value = p.default;
        else input.placeholder = "model default";
      } else {
        input = document.createElement("input"); input.type = "text";
        input.placeholder = p.default ? String(p.default) : "optional";
      }
      input.id = "opt-" + name; input.name = name;
      label.appendChild(input);
      if (p.description) { const s = document.createElement("small"); s.textContent = p.description; label.appendChild(s); }
      form.appendChild(label);
      state.fields.push({ name, input });
    }
  }

  function formData() {
    const fd = new FormData();
    fd.append("video", state.video, state.videoName || "video.mp4");
    for (const { name, input } of state.fields) {
      if (input.type === "file") { if (input.files.length) fd.append(name, input.files[0]); continue; }
      if (input.value !== "") fd.append(name, input.value);
    }
    return fd;
  }

  function chooseVideo(blob, name) {
    state.video = blob; state.videoName = name;
    $("video-name").textContent = `${name} (${(blob.size / 1024).toFixed(0)} KiB)`;
    const v = $("source-preview");
    v.src = blobUrl(blob); v.hidden = false;
    $("generate").disabled = false;
    setStatus("ready: press Generate");
  }

  // ---------------------------------------------------------------- a job
  async function generate() {
    if (!state.video) return;
    releaseUrls();
    chooseVideo(state.video, state.videoName);  // keep the preview's URL alive
    $("result").hidden = true;
    page.decoded = null; page.drawn = null; page.error = null; page.states = [];
    $("generate").disabled = true;
    setStatus("uploading…");
    $("progress").value = 0;
    let st;
    try {
      st = await getJson("v1/jobs", { method: "POST", body: formData() });
    } catch (e) {
      setStatus(`refused: ${e.message}`, true);
      $("generate").disabled = false;
      return;
    }
    page.job = st.job_id;
    state.jobUrl = st.links.self;
    $("cancel").disabled = false;
    track(st);
    state.timer = setInterval(poll, POLL_MS);
  }

  function track(st) {
    if (page.states[page.states.length - 1] !== st.state) page.states.push(st.state);
    const pr = st.progress || {};
    $("progress").value = pr.fraction || 0;
    const windows = pr.n_windows ? ` (${pr.windows_done} / ${pr.n_windows} windows)` : "";
    setStatus(`${st.state}${windows}`, st.state === "failed");
    if (st.state === "failed" && st.error) setStatus(`failed: ${st.error.message}`, true);
  }

  async function poll() {
    let st;
    try {
      st = await getJson(state.jobUrl.replace(/^\//, ""));
    } catch (e) {
      clearInterval(state.timer);
      setStatus(`the job could not be read: ${e.message}`, true);
      return;
    }
    track(st);
    if (["done", "failed", "cancelled"].includes(st.state)) {
      clearInterval(state.timer);
      $("cancel").disabled = true;
      $("generate").disabled = false;
      if (st.state === "done") await showResult(st);
    }
  }

  async function cancel() {
    if (!state.jobUrl) return;
    $("cancel").disabled = true;
    try {
      const st = await getJson(state.jobUrl.replace(/^\//, ""), { method: "DELETE" });
      track(st);
    } catch (e) {
      setStatus(`cancel failed: ${e.message}`, true);
    }
  }

  // ---------------------------------------------------------------- the result
  async function fetchBlob(path) {
    const r = await fetch(url(path));
    if (!r.ok) throw new Error(`HTTP ${r.status} for ${path}`);
    return r.blob();
  }

  async function decode(blob) {
    // An OfflineAudioContext decodes without a user gesture; at 16 kHz (the service's rate)
    // the samples are the WAV's own.
    const ctx = new OfflineAudioContext(1, 16000, 16000);
    const buf = await ctx.decodeAudioData(await blob.arrayBuffer());
    const x = buf.getChannelData(0);
    let sum = 0;
    for (let i = 0; i < x.length; i++) sum += x[i] * x[i];
    return { duration: buf.duration, sampleRate: buf.sampleRate, length: buf.length, rms: Math.sqrt(sum / Math.max(1, x.length)) };
  }

  async function showResult(st) {
    const base = st.links.result.replace(/^\//, "");
    try {
      const wav = await fetchBlob(base + "?kind=wav");
      const a = $("audio"); a.src = blobUrl(wav);
      const dl = $("download-wav"); dl.href = a.src; dl.download = `soundtrack-${st.job_id.slice(0, 8)}.wav`;
      page.decoded = await decode(wav);
      $("audio-info").textContent = `decoded in the browser: ${page.decoded.duration.toFixed(2)} s at ` +
        `${page.decoded.sampleRate} Hz, RMS ${page.decoded.rms.toFixed(4)}; generated in ${st.seconds} s`;
      const mp4 = $("download-mp4"), mv = $("muxed");
      if (st.output === "mp4") {
        const video = await fetchBlob(base + "?kind=mp4");
        mv.src = blobUrl(video); mv.hidden = false;
        mp4.href = mv.src; mp4.download = `soundtrack-${st.job_id.slice(0, 8)}.mp4`; mp4.hidden = false;
      } else { mv.hidden = true; mp4.hidden = true; }
      $("result").hidden = false;
      const analysis = await getJson(`v1/jobs/${st.job_id}/analysis`);
      drawSpectrogram(analysis);
      setStatus(`done: ${page.decoded.duration.toFixed(2)} s of soundtrack`);
    } catch (e) {
      setStatus(`the result could not be shown: ${e.message}`, true);
    }
  }

  // A perceptual dark-to-bright colour map (5 stops, interpolated).
  const STOPS = [[0, 0, 4], [80, 18, 123], [183, 55, 121], [251, 136, 97], [252, 253, 191]];
  function colour(v) {
    const x = (v / 255) * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
    return STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
  }

  function drawSpectrogram(an) {
    const canvas = $("spectrogram"), ctx = canvas.getContext("2d");
    const { n_mels: rows, columns: cols, hop_s: hop } = an.mel;
    const levels = Uint8Array.from(atob(an.mel.levels_b64), (c) => c.charCodeAt(0));
    const img = new ImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const [R, G, B] = colour(levels[r * cols + c]);
        const o = ((rows - 1 - r) * cols + c) * 4;  // low bands at the bottom
        img.data[o] = R; img.data[o + 1] = G; img.data[o + 2] = B; img.data[o + 3] = 255;
      }
    }
    const off = document.createElement("canvas"); off.width = cols; off.height = rows;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    const seconds = Math.max(an.seconds, cols * hop);
    const xOf = (t) => (t / seconds) * canvas.width;
    // the music's beats
    ctx.strokeStyle = "rgba(255, 211, 61, 0.85)"; ctx.lineWidth = 1.5;
    for (const t of an.beats) { ctx.beginPath(); ctx.moveTo(xOf(t), 0); ctx.lineTo(xOf(t), canvas.height); ctx.stroke(); }
    // the video's rhythm curve, scaled to its own peak, over the top half
    if (an.rhythm && an.rhythm.values.length) {
      const vals = an.rhythm.values, peak = Math.max(1e-6, ...vals), h = canvas.height * 0.5;
      ctx.strokeStyle = "#41e0c9"; ctx.lineWidth = 2; ctx.beginPath();
      vals.forEach((v, i) => {
        const x = xOf((i + 0.5) * an.rhythm.step_s), y = h - (v / peak) * (h - 4);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    // time axis (s)
    ctx.fillStyle = "#fff"; ctx.font = "12px sans-serif";
    const step = seconds > 120 ? 60 : seconds > 30 ? 10 : seconds > 8 ? 2 : 1;
    for (let t = 0; t <= seconds; t += step) ctx.fillText(`${t}s`, xOf(t) + 2, canvas.height - 4);
    canvas.dataset.drawn = "1";
    page.drawn = { columns: cols, rows, beats: an.beats.length, rhythm: an.rhythm ? an.rhythm.values.length : 0 };
    $("analysis-info").textContent = `${an.seconds.toFixed(2)} s; ${an.beats.length} beats; ` +
      `${rows} mel bands, a column every ${(hop * 1000).toFixed(0)} ms; colour: 0 to -${an.mel.top_db} dB`;
  }

  // ---------------------------------------------------------------- the runs view
  function cell(tr, text, tag) { const td = document.createElement(tag || "td"); td.textContent = text; tr.appendChild(td); }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
    return String(v);
  }

  function table(columns, rows) {
    const t = document.createElement("table");
    const head = document.createElement("tr"); columns.forEach((c) => cell(head, c, "th")); t.appendChild(head);
    rows.forEach((r) => { const tr = document.createElement("tr"); r.forEach((v) => cell(tr, fmt(v))); t.appendChild(tr); });
    return t;
  }

  function plots(div, stage, run) {
    for (const p of run.plots) {
      const link = document.createElement("a"), img = document.createElement("img");
      link.href = url(`v1/runs/${stage}/${encodeURIComponent(run.name)}/plots/${encodeURIComponent(p)}`);
      link.target = "_blank"; link.rel = "noopener";
      img.alt = `${run.name}: ${p}`; img.src = link.href;
      if (stage === "bench") img.className = "wide";  // one plot with a panel per metric group
      link.appendChild(img);
      div.appendChild(link);
    }
  }

  function runBox(title, sub) {
    const div = document.createElement("div"); div.className = "run";
    const h = document.createElement("h3"); h.textContent = title; div.appendChild(h);
    if (sub) { const p = document.createElement("p"); p.className = "muted"; p.textContent = sub; div.appendChild(p); }
    return div;
  }

  async function loadRuns() {
    $("runs-status").textContent = "loading…";
    let data;
    try { data = await getJson("v1/runs"); } catch (e) { $("runs-status").textContent = e.message; return; }
    const tune = $("runs-tune"), bench = $("runs-bench"), reg = $("runs-registry");
    [tune, bench, reg].forEach((d) => { d.textContent = ""; });
    for (const run of data.tune) {
      const best = run.best ? `; best score ${fmt(run.best.score)}` : "";
      const div = runBox(run.name, `${run.status}; ${run.trials.n} trials${best}; ${run.finished_at || run.started_at || ""}`);
      const keep = run.trials.columns.map((c, i) => [c, i]).filter(([c]) =>
        ["order", "trial_id", "status", "score", "clips", "complete", "time_s"].includes(c) || c.startsWith("param_"));
      div.appendChild(table(keep.map(([c]) => c.replace(/^param_/, "")), run.trials.rows.map((r) => keep.map(([, i]) => r[i]))));
      div.dataset.trials = String(run.trials.rows.length);
      plots(div, "tune", run);
      tune.appendChild(div);
    }
    for (const run of data.bench) {
      const div = runBox(run.name, `${run.status}; ${fmt(run.clips)} clips, seeds ${JSON.stringify(run.seeds)}; mean [95 % interval]`);
      const rows = run.rows.map((r) => [r.method].concat(run.metrics.map((m) => {
        const v = r.values[m]; return v ? `${fmt(v[0])} [${fmt(v[1])}, ${fmt(v[2])}]` : "–";
      })));
      div.appendChild(table(["method"].concat(run.metrics), rows));
      plots(div, "bench", run);
      bench.appendChild(div);
    }
    for (const entry of data.registry) {
      const div = runBox(entry.name, entry.version ? `version ${entry.version}, ${entry.created_at || ""}` : entry.message || "");
      const pre = document.createElement("div"); pre.className = "card";
      pre.textContent = JSON.stringify(entry.settings || entry.sampler || entry, null, 2);
      div.appendChild(pre);
      reg.appendChild(div);
    }
    const n = (k) => data[k].length;
    $("runs-status").textContent = `${n("tune")} searches, ${n("bench")} benches, ${n("registry")} registry entries`;
    ["tune", "bench", "registry"].forEach((k) => { if (!n(k)) $("runs-" + k).textContent = "none yet"; });
    page.runs = { tune: n("tune"), bench: n("bench"), registry: n("registry") };
  }

  // ---------------------------------------------------------------- start
  async function init() {
    document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => showView(t.dataset.view)));
    $("video-file").addEventListener("change", (e) => {
      const f = e.target.files[0];
      if (f) { $("clip-select").value = ""; chooseVideo(f, f.name); }
    });
    $("clip-select").addEventListener("change", async (e) => {
      const v = e.target.value;
      if (!v) return;
      try { chooseVideo(await fetchBlob(`v1/clips/${v}`), v.split("/").pop()); } catch (err) { setStatus(err.message, true); }
    });
    $("generate").addEventListener("click", generate);
    $("cancel").addEventListener("click", cancel);
    $("runs-refresh").addEventListener("click", loadRuns);
    try {
      const [model, spec] = await Promise.all([getJson("v1/model"), getJson("openapi.json")]);
      state.model = model;
      $("model").textContent = `model: ${model.uri || "?"} · conditions: ${(model.conditions || []).join(", ")}`;
      const body = spec.paths["/v1/jobs"].post.requestBody.content["multipart/form-data"].schema;
      buildForm(body, model);
    } catch (e) {
      setStatus(`the service did not answer: ${e.message}`, true);
      return;
    }
    try {
      const { clips } = await getJson("v1/clips");
      const sel = $("clip-select");
      for (const c of clips) { const o = document.createElement("option"); o.value = `${c.run}/${c.clip}`; o.textContent = `${c.clip} (${c.run})`; sel.appendChild(o); }
    } catch (e) { /* no storage root: no test clips */ }
    page.ready = true;
  }

  init();
})();
