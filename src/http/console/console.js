// The lookalike console: a client of the HTTP API like any other.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { gallery: localStorage.getItem("lookalike.gallery") || "", lastQuery: null, thumbs: [] };
const ADD_BATCH = 16; // images per add request: progress moves, bodies stay small

function headers() {
  const key = $("api-key").value.trim();
  return key ? { authorization: "Bearer " + key } : {};
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

// fetch + JSON; a failed request shows the server's message and throws it.
async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const msg = data && data.error ? data.error.message : `${resp.status} ${resp.statusText}`;
    showError(msg);
    throw new Error(msg);
  }
  showError("");
  return data;
}

const g = () => "/v1/galleries/" + encodeURIComponent(state.gallery);

async function loadGalleries() {
  const { galleries } = await api("GET", "/v1/galleries");
  const sel = $("gallery-select");
  sel.replaceChildren(...galleries.map((x) => new Option(`${x.gallery} (${x.count})`, x.gallery)));
  if (!galleries.some((x) => x.gallery === state.gallery)) state.gallery = galleries.length ? galleries[0].gallery : "";
  sel.value = state.gallery;
  await loadStats();
}

async function loadStats() {
  const dl = $("stats");
  dl.replaceChildren();
  if (!state.gallery) return;
  const s = await api("GET", g());
  const rows = [
    ["items", s.count], ["dims", s.dims], ["model", s.model_fingerprint], ["provider", s.execution_provider],
    ["index", `${s.index.graph ? "HNSW graph" : "exact"}${s.index.rebuilding ? ", rebuilding" : ""}, ${s.index.points} points, ${s.index.tombstones} tombstones`],
    ["post-processing", `generation ${s.index.post_processing_generation}, ${s.index.stale_items} pending`],
  ];
  for (const [k, v] of rows) dl.append(Object.assign(document.createElement("dt"), { textContent: k }),
    Object.assign(document.createElement("dd"), { textContent: String(v) }));
  const opt = [...$("gallery-select").options].find((o) => o.value === state.gallery);
  if (opt) opt.text = `${s.gallery} (${s.count})`;
}

function options() {
  return {
    top_k: Number($("top-k").value) || 0,
    post_processing: {
      query_expansion: { enabled: $("qe-toggle").checked },
      k_reciprocal: { enabled: $("kr-toggle").checked },
    },
  };
}

async function search(query) {
  if (!state.gallery) return showError("create or pick a gallery first");
  state.lastQuery = query;
  let result;
  if (query.file) {
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    form.append("options", new Blob([JSON.stringify(options())], { type: "application/json" }));
    result = await api("POST", g() + "/search", form);
  } else {
    result = await api("POST", g() + "/search", { ...options(), item_id: query.id });
  }
  showHits(result);
}

// Stored thumbnails need the API key, so they come through fetch.
async function setThumb(img, url) {
  if (!url) return;
  if (!url.startsWith("/")) { img.src = url; return; }
  const resp = await fetch(url, { headers: headers() });
  if (!resp.ok) return;
  const blob = URL.createObjectURL(await resp.blob());
  state.thumbs.push(blob);
  img.src = blob;
}

function showHits({ hits, timings, stages }) {
  state.thumbs.forEach(URL.revokeObjectURL);
  state.thumbs = [];
  $("hits").replaceChildren(...hits.map((h, i) => {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.id = h.id;
    const img = document.createElement("img");
    img.alt = h.id;
    img.loading = "lazy";
    setThumb(img, h.thumbnail);
    const meta = Object.entries(h.metadata).map(([k, v]) => `${k}: ${v}`).join(", ");
    const text = document.createElement("div");
    text.innerHTML = `<span class="rank"></span> <span class="id"></span><br><span class="distance"></span><br><span class="meta"></span>`;
    text.querySelector(".rank").textContent = `#${i + 1}`;
    text.querySelector(".id").textContent = h.id;
    text.querySelector(".distance").textContent = `distance ${h.distance.toFixed(4)}`;
    text.querySelector(".meta").textContent = meta;
    const again = Object.assign(document.createElement("button"), { textContent: "Search with this" });
    again.onclick = () => { $("query-id").value = h.id; search({ id: h.id }).catch(() => {}); };
    const rm = Object.assign(document.createElement("button"), { textContent: "Remove", className: "remove" });
    rm.onclick = () => removeItem(h.id, li).catch(() => {});
    li.append(img, text, again, rm);
    return li;
  }));
  const total = timings.reduce((s, t) => s + t.micros, 0);
  $("timings").textContent = `stages: ${stages.join(" → ") || "none"}; ` +
    timings.map((t) => `${t.stage} ${(t.micros / 1000).toFixed(1)} ms`).join(", ") + `; total ${(total / 1000).toFixed(1)} ms`;
}

async function removeItem(id, li) {
  await api("DELETE", g() + "/items/" + encodeURIComponent(id));
  li.remove();
  await loadStats();
}

function queryFile(file) {
  if (!file) return;
  const prev = $("query-preview");
  if (prev.src) URL.revokeObjectURL(prev.src);
  prev.src = URL.createObjectURL(file);
  prev.hidden = false;
  search({ file }).catch(() => {});
}

// Adds in batches; each outcome is listed as the server reports it.
async function addFiles(files) {
  files = files.filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|webp|gif|bmp)$/i.test(f.name));
  if (!state.gallery) return showError("create or pick a gallery first");
  if (!files.length) return showError("no image files in what was dropped");
  const bar = $("add-progress");
  Object.assign(bar, { max: files.length, value: 0, hidden: false });
  $("outcomes").replaceChildren();
  // Item ids are the prefix and the file's path (inside a dropped folder).
  const prefix = $("id-prefix").value.trim();
  const totals = { added: 0, replaced: 0, retry_later: 0, rejected: 0 };
  for (let i = 0; i < files.length; i += ADD_BATCH) {
    const form = new FormData();
    for (const f of files.slice(i, i + ADD_BATCH)) form.append("image", f, prefix + (f.webkitRelativePath || f.relativePath || f.name));
    let res;
    try { res = await api("POST", g() + "/items", form); } catch { break; }
    for (const o of res.outcomes) {
      totals[o.status] += 1;
      const li = Object.assign(document.createElement("li"), { className: o.status });
      li.textContent = `${o.id}: ${o.status}${o.reason ? " — " + o.reason : ""}`;
      $("outcomes").append(li);
    }
    bar.value = Math.min(files.length, i + ADD_BATCH);
    $("add-summary").textContent = Object.entries(totals).map(([k, v]) => `${k} ${v}`).join(", ");
  }
  await loadStats().catch(() => {});
}

// A dropped folder: walk its entries (webkitGetAsEntry), keeping paths as ids.
async function droppedFiles(dt) {
  const walk = async (entry, path) => {
    if (entry.isFile) {
      const f = await new Promise((ok, bad) => entry.file(ok, bad));
      f.relativePath = path + f.name;
      return [f];
    }
    const reader = entry.createReader();
    const out = [];
    for (;;) {
      const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
      if (!batch.length) return out;
      for (const e of batch) out.push(...await walk(e, path + entry.name + "/"));
    }
  };
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length || entries.every((e) => e.isFile)) return [...dt.files];
  return (await Promise.all(entries.map((e) => walk(e, "")))).flat();
}

function dropZone(el, onDrop) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => { e.preventDefault(); el.classList.remove("over"); onDrop(e.dataTransfer); });
}

function init() {
  $("api-key").value = localStorage.getItem("lookalike.key") || "";
  $("api-key").onchange = () => { localStorage.setItem("lookalike.key", $("api-key").value.trim()); loadGalleries().catch(() => {}); };
  $("gallery-select").onchange = (e) => {
    state.gallery = e.target.value;
    localStorage.setItem("lookalike.gallery", state.gallery);
    $("hits").replaceChildren();
    loadStats().catch(() => {});
  };
  $("create-gallery").onclick = async () => {
    const name = $("new-gallery").value.trim();
    try {
      await api("POST", "/v1/galleries", { gallery: name });
      state.gallery = name;
      localStorage.setItem("lookalike.gallery", name);
      await loadGalleries();
    } catch { /* shown */ }
  };
  $("query-file").onchange = (e) => queryFile(e.target.files[0]);
  dropZone($("query-drop"), (dt) => queryFile(dt.files[0]));
  $("search-id").onclick = () => search({ id: $("query-id").value.trim() }).catch(() => {});
  for (const t of ["qe-toggle", "kr-toggle", "top-k"]) {
    $(t).onchange = () => { if (state.lastQuery) search(state.lastQuery).catch(() => {}); };
  }
  $("add-files").onchange = (e) => addFiles([...e.target.files]);
  $("add-folder").onchange = (e) => addFiles([...e.target.files]);
  dropZone($("add-drop"), async (dt) => addFiles(await droppedFiles(dt)));
  loadGalleries().catch(() => {});
}

init();
