// The infermux chat page: plain JavaScript, no dependencies, talks to this server's OpenAI routes.
"use strict";

const $ = (id) => document.getElementById(id);
const history = []; // {role, content} of the turns so far (the system prompt is added per request)
let model = null;
let controller = null;
const totals = { answers: 0, tokens: 0, firstSeconds: 0, genSeconds: 0 }; // this conversation's, for #status

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text; // text only: model output is never interpreted as HTML
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  showEmpty();
  return div;
}

// An answer as Markdown (markdown.js builds nodes from text: nothing in it runs as HTML).
function showAnswer(div, text) {
  div.replaceChildren(renderMarkdown(text));
}

function showEmpty() {
  $("empty").hidden = $("log").childElementCount > 0;
}

// The sampling a request gets when the page sends none (the server's defaults) as the fields' hints.
async function loadDefaults() {
  try {
    const r = await fetch("/health");
    const sampling = (await r.json()).sampling || {};
    for (const field of ["temperature", "top_p"]) {
      if (sampling[field] !== undefined) $(field).placeholder = sampling[field] + " (server default)";
    }
  } catch (e) {
    // the placeholders stay generic
  }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    model = body.data[0].id;
    $("model").textContent = "model: " + model;
  } catch (e) {
    $("model").textContent = "could not list models: " + e.message;
  }
}

function params() {
  const p = {};
  for (const field of ["temperature", "top_p"]) {
    const value = $(field).value.trim(); // empty: the server's default (see loadDefaults)
    if (value !== "") p[field] = Number(value);
  }
  const maxTokens = parseInt($("max_tokens").value, 10);
  if (maxTokens > 0) p.max_tokens = maxTokens;
  const seed = $("seed").value.trim();
  if (seed !== "") p.seed = parseInt(seed, 10);
  return p;
}

// Read server-sent events from a fetch response, calling onData with each parsed "data:" payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  if (!model) await loadModel();
  history.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = { model, messages, stream: true, stream_options: { include_usage: true }, ...params() };
  controller = new AbortController();
  setBusy(true);
  $("status").textContent = "waiting for the first token…";
  const start = performance.now();
  let first = null;
  let answer = "";
  let usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
    }
    await readEvents(r, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        answer += delta.content;
        showAnswer(out, answer);
        $("log").scrollTop = $("log").scrollHeight;
      }
    });
    history.push({ role: "assistant", content: answer });
    const end = performance.now();
    const tokens = usage ? usage.completion_tokens : null;
    const genSeconds = first !== null ? (end - first) / 1000 : 0;
    const parts = [];
    if (first !== null) parts.push("first token " + ((first - start) / 1000).toFixed(2) + " s");
    if (tokens !== null) parts.push(tokens + " tokens");
    if (tokens && genSeconds > 0) parts.push((tokens / genSeconds).toFixed(1) + " tokens/s");
    parts.push(((end - start) / 1000).toFixed(2) + " s");
    const meta = document.createElement("div");
    meta.className = "meta"; // under each answer, kept as the conversation grows
    meta.textContent = parts.join(" · ");
    out.after(meta);
    totals.answers += 1;
    totals.tokens += tokens || 0;
    totals.firstSeconds += first !== null ? (first - start) / 1000 : 0;
    totals.genSeconds += genSeconds;
    $("status").textContent = summary();
    $("status").dataset.done = String(history.length);
  } catch (e) {
    if (answer) history.push({ role: "assistant", content: answer });
    else history.pop(); // a failed turn is not kept: the user can edit and resend it
    out.className = "msg error";
    out.textContent = (answer ? answer + "\n" : "") + (e.name === "AbortError" ? "[stopped]" : "error: " + e.message);
    $("status").textContent = "";
  } finally {
    controller = null;
    setBusy(false);
  }
}

// The conversation so far (each answer's own timing is under it).
function summary() {
  const parts = [totals.answers + (totals.answers === 1 ? " answer" : " answers"), totals.tokens + " tokens"];
  parts.push("first token " + (totals.firstSeconds / totals.answers).toFixed(2) + " s on average");
  if (totals.genSeconds > 0) parts.push((totals.tokens / totals.genSeconds).toFixed(1) + " tokens/s");
  return "this chat: " + parts.join(" · ");
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  history.length = 0;
  Object.assign(totals, { answers: 0, tokens: 0, firstSeconds: 0, genSeconds: 0 });
  $("log").textContent = "";
  $("status").textContent = "";
  showEmpty();
});
$("api_key").addEventListener("change", loadModel);
if (window.matchMedia("(max-width: 700px)").matches) $("options").open = false; // phones: fold the settings
showEmpty();
loadDefaults();
loadModel();
