// The annotation page: fetch a pair, show it as text (textContent, never HTML), send the choice, fetch the next.
"use strict";
const $ = (id) => document.getElementById(id);
const LABELS = { a: "left", b: "right", tie: "tie" };
let pair = null;
let busy = false;

function annotator() { return $("name").value.trim(); }
function setStatus(text) { $("status").textContent = text; }
function enable(on) { for (const id of ["choose-a", "choose-b", "choose-tie"]) $(id).disabled = !on; }

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function next() {
  pair = null;
  enable(false);
  if (!annotator()) { setStatus("Enter your name to start."); return; }
  const p = await api("/api/pair?annotator=" + encodeURIComponent(annotator()));
  $("prompt").textContent = p.prompt;
  $("a").textContent = p.a;
  $("b").textContent = p.b;
  $("count").textContent = String(p.count);
  $("pair").dataset.pair = p.id;
  pair = p;
  enable(true);
}

async function choose(choice) {
  if (!pair || busy) return;
  busy = true;
  enable(false);
  try {
    const r = await api("/api/judgement", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: pair.id, choice: choice, annotator: annotator() }),
    });
    $("count").textContent = String(r.count);
    setStatus("saved: " + LABELS[choice]);
  } catch (e) {
    setStatus("not saved: " + e.message);
  } finally {
    busy = false;
  }
  await next().catch((e) => setStatus(e.message));
}

document.addEventListener("DOMContentLoaded", () => {
  $("name").value = localStorage.getItem("annotator") || "";
  $("name").addEventListener("change", () => {
    localStorage.setItem("annotator", annotator());
    next().catch((e) => setStatus(e.message));
  });
  for (const id of ["choose-a", "choose-b", "choose-tie"]) {
    $(id).addEventListener("click", () => choose($(id).dataset.choice));
  }
  document.addEventListener("keydown", (event) => {
    if (event.target === $("name") || event.ctrlKey || event.metaKey || event.altKey) return;
    const choice = { "1": "a", "2": "b", "0": "tie" }[event.key];
    if (choice) { event.preventDefault(); choose(choice); }
  });
  next().catch((e) => setStatus(e.message));
});
