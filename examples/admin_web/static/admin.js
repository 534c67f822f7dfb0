// The admin page's behaviour: selection, the precautions dialog, progress polling.
// No inline script: the page's Content-Security-Policy allows only this file.
"use strict";

function members() {
  const form = document.getElementById("reset-form");
  if (!form) return;
  const boxes = () => Array.from(document.querySelectorAll("input.member"));
  const all = document.getElementById("select-all");
  const button = document.getElementById("reset-button");
  const count = document.getElementById("selected-count");
  const dialog = document.getElementById("reset-dialog");
  const chosen = () => boxes().filter((b) => b.checked).map((b) => b.value);

  function refresh() {
    const n = chosen().length;
    count.textContent = `${n} selected`;
    button.disabled = n === 0;
    all.checked = n > 0 && n === boxes().length;
    all.indeterminate = n > 0 && n < boxes().length;
  }
  all.addEventListener("change", () => {
    boxes().forEach((b) => { b.checked = all.checked; });
    refresh();
  });
  boxes().forEach((b) => b.addEventListener("change", refresh));

  button.addEventListener("click", async () => {
    const response = await fetch("/precautions", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "X-CSRF-Token": document.getElementById("csrf").value,
      },
      body: JSON.stringify({ member_ids: chosen() }),
    });
    const info = await response.json();
    document.getElementById("counts").textContent =
      `${info.selected} member(s) selected; ${info.inactive} pending or suspended; ` +
      `${info.quick_login} Quick Login; ${info.cannot_self_recover.length} cannot recover a password themselves.`;
    const list = document.getElementById("precautions");
    list.replaceChildren(...info.precautions.map((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      return item;
    }));
    const none = document.getElementById("no-recovery-list");
    none.replaceChildren(...info.cannot_self_recover.map((m) => {
      const item = document.createElement("li");
      item.textContent = m.name;
      item.dataset.member = m.member_id;
      return item;
    }));
    document.getElementById("no-recovery").hidden = info.cannot_self_recover.length === 0;
    document.getElementById("step-precautions").hidden = false;
    document.getElementById("step-mode").hidden = true;
    dialog.showModal();
  });
  document.getElementById("cancel").addEventListener("click", () => dialog.close());
  document.getElementById("ok").addEventListener("click", () => {
    document.getElementById("step-precautions").hidden = true;
    document.getElementById("step-mode").hidden = false;
  });
  document.getElementById("back").addEventListener("click", () => {
    document.getElementById("step-precautions").hidden = false;
    document.getElementById("step-mode").hidden = true;
  });
  const passwords = document.getElementById("passwords");
  document.querySelectorAll("input[name=mode]").forEach((radio) => radio.addEventListener(
    "change", () => { passwords.hidden = !document.getElementById("mode-force").checked; }));
  refresh();
}

function progress() {
  const box = document.getElementById("progress");
  if (!box) return;
  const bar = document.getElementById("bar");
  const text = document.getElementById("progress-text");
  async function poll() {
    const response = await fetch(box.dataset.poll);
    const run = await response.json();
    bar.max = run.total || 1;
    bar.value = run.done;
    text.textContent = `${run.done} of ${run.total}`;
    if (run.state === "finished") {
      window.location.assign(box.dataset.done);
    } else if (run.state === "failed") {
      const failure = document.getElementById("failure");
      failure.textContent = run.error;
      failure.hidden = false;
    } else {
      setTimeout(poll, 250);
    }
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => { members(); progress(); });
