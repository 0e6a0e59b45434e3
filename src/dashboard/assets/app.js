// oxibase dashboard: progressive behaviour only. Every page works as plain HTML forms;
// this adds confirmations, key reveal, the SQL editor, uploads with progress and policy
// templates. Values from the server are written with textContent, never as HTML.
"use strict";
(function () {
  const PREFIX = "/_/";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (s, el) => (el || document).querySelector(s);
  const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k);
    return e;
  };
  async function api(path, opts) {
    const o = Object.assign({ credentials: "same-origin", headers: {} }, opts || {});
    o.headers = Object.assign({ "x-csrf-token": csrf() }, o.headers);
    const r = await fetch(PREFIX + path, o);
    return r.json();
  }
  let keysCache = null;
  async function keys() {
    if (!keysCache) keysCache = await api("api/keys");
    return keysCache;
  }
  window.oxibase = { api, keys, el };

  document.addEventListener("submit", (ev) => {
    const f = ev.target;
    if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) ev.preventDefault();
  });

  function initReveal() {
    for (const b of $$("button[data-reveal]")) {
      b.addEventListener("click", async () => {
        const k = await keys();
        const code = $('code[data-key="' + b.dataset.reveal + '"]');
        if (b.textContent === "Reveal") {
          code.textContent = k[b.dataset.reveal];
          b.textContent = "Hide";
        } else {
          code.textContent = "••••••••••••••••";
          b.textContent = "Reveal";
        }
      });
    }
  }

  // ---- SQL editor ----
  const HISTORY = "oxibase.sql.history";
  function history() {
    try { return JSON.parse(localStorage.getItem(HISTORY) || "[]"); } catch (_) { return []; }
  }
  function renderHistory() {
    const ul = $("#sql-history");
    if (!ul) return;
    ul.replaceChildren(...history().map((q) => {
      const li = el("li", { textContent: q, title: q });
      li.addEventListener("click", () => { $("#sql").value = q; $("#sql").focus(); });
      return li;
    }));
  }
  function grid(res) {
    const wrap = el("div", { className: "card scroll" });
    const meta = el("p", { className: "muted", textContent: res.affected != null
      ? (res.rows.length + " row(s)" + (res.truncated ? " (first 1000 shown)" : "") + " · " + res.affected + " affected")
      : "" });
    wrap.append(meta);
    if (!res.columns.length) return wrap;
    const t = el("table", { className: "grid result" });
    t.append(el("thead", {}, el("tr", {}, ...res.columns.map((c) => el("th", { textContent: c })))));
    const tb = el("tbody");
    for (const row of res.rows) {
      tb.append(el("tr", {}, ...row.map((v) => v === null
        ? el("td", { className: "null", textContent: "NULL" })
        : el("td", { textContent: v, title: v.length > 40 ? v : "" }))));
    }
    t.append(tb);
    wrap.append(t);
    return wrap;
  }
  async function runSql(explain) {
    const sql = $("#sql").value;
    if (!sql.trim()) return;
    const out = $("#sql-result");
    out.replaceChildren(el("p", { className: "muted", textContent: "Running…" }));
    const h = history().filter((q) => q !== sql);
    h.unshift(sql);
    localStorage.setItem(HISTORY, JSON.stringify(h.slice(0, 50)));
    renderHistory();
    let body;
    try {
      body = await api("api/sql", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ sql, explain }) });
    } catch (e) { body = { error: { message: String(e) } }; }
    if (body.error) {
      const e = body.error;
      let text = "ERROR" + (e.code ? " " + e.code : "") + ": " + e.message;
      if (e.line) text += "\nat line " + e.line + ", column " + e.column + " (position " + e.position + ")";
      if (e.detail) text += "\nDETAIL: " + e.detail;
      if (e.hint) text += "\nHINT: " + e.hint;
      out.replaceChildren(el("div", { className: "sqlerr", textContent: text }));
      if (e.position) {
        const ta = $("#sql");
        ta.focus();
        ta.setSelectionRange(e.position - 1, e.position);
      }
      return;
    }
    const kids = [el("p", { className: "muted", textContent: "Done in " + body.ms.toFixed(1) + " ms" })];
    for (const r of body.results) kids.push(grid(r));
    out.replaceChildren(...kids);
  }
  function initSql() {
    if (!$("#sql-run")) return;
    $("#sql-run").addEventListener("click", () => runSql(false));
    $("#sql-explain").addEventListener("click", () => runSql(true));
    $("#sql").addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); runSql(false); }
    });
    renderHistory();
  }

  // ---- Storage: uploads with progress through the storage API ----
  function upload(file, bucket, prefix, bar, done) {
    keys().then((k) => {
      const path = (prefix ? prefix.replace(/\/?$/, "/") : "") + file.name;
      const url = "/storage/v1/object/" + encodeURIComponent(bucket) + "/" +
        path.split("/").map(encodeURIComponent).join("/");
      const x = new XMLHttpRequest();
      x.open("POST", url);
      x.setRequestHeader("authorization", "Bearer " + k.service_role);
      x.setRequestHeader("apikey", k.service_role);
      x.setRequestHeader("x-upsert", "true");
      x.setRequestHeader("content-type", file.type || "application/octet-stream");
      x.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total * 100; };
      x.onload = () => done(x.status < 300 ? null : (JSON.parse(x.responseText || "{}").message || x.statusText));
      x.onerror = () => done("network error");
      x.send(file);
    });
  }
  function initStorage() {
    const zone = $("#drop");
    if (!zone) return;
    const input = $("#file-input");
    const status = $("#upload-status");
    const send = (files) => {
      let left = files.length;
      const errors = [];
      for (const f of files) {
        const bar = el("progress", { max: 100, value: 0 });
        status.append(el("div", {}, el("span", { textContent: f.name + " " }), bar));
        upload(f, zone.dataset.bucket, zone.dataset.prefix, bar, (err) => {
          if (err) errors.push(f.name + ": " + err);
          if (--left === 0) {
            const u = new URL(location.href);
            u.searchParams.delete("msg"); u.searchParams.delete("err");
            u.searchParams.set(errors.length ? "err" : "msg", errors.length ? errors.join("; ") : "Uploaded " + files.length + " file(s)");
            location.href = u.toString();
          }
        });
      }
    };
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); send(Array.from(e.dataTransfer.files)); });
    input.addEventListener("change", () => send(Array.from(input.files)));
  }

  // ---- Table editor: policy templates ----
  const TEMPLATES = {
    owner: { name: "owner only", command: "ALL", roles: "authenticated",
      using: "(select auth.uid()) = user_id", check: "(select auth.uid()) = user_id" },
    read: { name: "public read", command: "SELECT", roles: "anon, authenticated", using: "true", check: "" },
    auth: { name: "signed-in users", command: "ALL", roles: "authenticated", using: "true", check: "true" },
  };
  function initPolicies() {
    for (const b of $$("button[data-template]")) {
      b.addEventListener("click", () => {
        const t = TEMPLATES[b.dataset.template];
        const f = b.closest("form");
        f.elements.name.value = t.name;
        f.elements.command.value = t.command;
        f.elements.roles.value = t.roles;
        f.elements.using.value = t.using;
        f.elements.check.value = t.check;
      });
    }
  }

  function initCopy() {
    for (const b of $$("button[data-copy]")) {
      b.addEventListener("click", () => {
        const t = $(b.dataset.copy);
        if (navigator.clipboard && t) navigator.clipboard.writeText(t.textContent || t.value);
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    initReveal(); initSql(); initStorage(); initPolicies(); initCopy();
  });
})();
document.addEventListener("DOMContentLoaded", () => {
  for (const s of document.querySelectorAll("select[data-autosubmit]")) {
    s.addEventListener("change", () => s.form.submit());
  }
});
