// Erasure view: send each action form as JSON (the API refuses anything else), show the answer, reload.
// Hand-written, no build step, nothing loaded from elsewhere.
"use strict";
document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (!(form instanceof HTMLFormElement) || !form.classList.contains("action")) return;
  ev.preventDefault();
  const out = form.querySelector(".result");
  const body = {};
  for (const [k, v] of new FormData(form).entries()) body[k] = v;
  const button = form.querySelector("button");
  if (button) button.disabled = true;
  try {
    const resp = await fetch(form.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({}));
    if (resp.ok) {
      if (out) { out.textContent = "done (action " + data.action_id + ")"; out.className = "result ok"; }
      setTimeout(() => window.location.reload(), 400);
    } else {
      let msg = data.detail;
      if (Array.isArray(msg)) msg = msg.map((d) => (d.loc || []).slice(-1)[0] + ": " + d.msg).join("; ");
      if (out) { out.textContent = resp.status + ": " + (msg || resp.statusText); out.className = "result bad"; }
      if (button) button.disabled = false;
    }
  } catch (err) {
    if (out) { out.textContent = String(err); out.className = "result bad"; }
    if (button) button.disabled = false;
  }
});
