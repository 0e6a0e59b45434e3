// The realtime inspector: the Phoenix protocol (vsn 1.0.0, JSON objects) over the
// realtime WebSocket, with a key fetched from the dashboard. Text only (no innerHTML).
"use strict";
(function () {
  const $ = (s) => document.querySelector(s);
  let ws = null, topic = null, ref = 0, joinRef = null, beat = null;
  const presence = {};
  const nextRef = () => String(++ref);

  function log(kind, data) {
    const box = $("#rt-events");
    const d = document.createElement("div");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = new Date().toISOString().slice(11, 23) + " " + kind + " ";
    d.append(t, typeof data === "string" ? data : JSON.stringify(data));
    box.prepend(d);
    while (box.childNodes.length > 300) box.lastChild.remove();
  }
  function status(s, ok) {
    const b = $("#rt-status");
    b.textContent = s;
    b.className = "badge" + (ok ? " on" : "");
  }
  function send(msg) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(msg)); }
  function renderPresence() {
    const ul = $("#rt-presence");
    ul.replaceChildren(...Object.entries(presence).map(([k, metas]) => {
      const li = document.createElement("li");
      li.textContent = k + ": " + JSON.stringify(metas.map((m) => { const c = Object.assign({}, m); delete c.phx_ref; return c; }));
      return li;
    }));
  }
  function enable(joined) {
    $("#rt-send button[type=submit]").disabled = !joined;
    $("#rt-track").disabled = !joined;
    $("#rt-leave").disabled = !joined;
    $("#rt-join-btn").disabled = joined;
  }
  function onMessage(ev) {
    const m = JSON.parse(ev.data);
    if (m.topic === "phoenix") return;
    const p = m.payload || {};
    switch (m.event) {
      case "phx_reply":
        if (m.ref === joinRef) {
          if (p.status === "ok") { status("joined " + topic.slice(9), true); enable(true); log("joined", p.response || {}); }
          else { status("join refused"); log("error", p); }
        } else if (p.status !== "ok") log("reply", p);
        break;
      case "broadcast": log("broadcast", p); break;
      case "postgres_changes": log("postgres_changes", p.data || p); break;
      case "presence_state":
        for (const k in presence) delete presence[k];
        for (const [k, v] of Object.entries(p)) presence[k] = v.metas || [];
        renderPresence(); log("presence_state", p); break;
      case "presence_diff":
        for (const [k, v] of Object.entries(p.joins || {})) presence[k] = (presence[k] || []).concat(v.metas || []);
        for (const [k] of Object.entries(p.leaves || {})) delete presence[k];
        renderPresence(); log("presence_diff", p); break;
      case "system": log("system", p); break;
      case "phx_error": case "phx_close": log(m.event, p); status(m.event); enable(false); break;
      default: log(m.event, p);
    }
  }
  async function join(ev) {
    ev.preventDefault();
    const f = ev.target;
    const keys = await window.oxibase.keys();
    const key = keys[f.elements.key.value];
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = proto + "//" + location.host + "/realtime/v1/websocket?apikey=" + encodeURIComponent(key) + "&vsn=1.0.0";
    if (ws) ws.close();
    ws = new WebSocket(url);
    topic = "realtime:" + f.elements.channel.value;
    status("connecting");
    ws.onmessage = onMessage;
    ws.onclose = () => { status("disconnected"); enable(false); clearInterval(beat); };
    ws.onopen = () => {
      const changes = { event: "*", schema: f.elements.schema.value || "public" };
      if (f.elements.table.value) changes.table = f.elements.table.value;
      joinRef = nextRef();
      send({ topic, event: "phx_join", ref: joinRef, join_ref: joinRef, payload: {
        config: { broadcast: { self: true, ack: true }, presence: { key: "dashboard-" + Math.random().toString(36).slice(2, 8) },
          postgres_changes: f.elements.schema.value ? [changes] : [], private: false },
        access_token: key } });
      beat = setInterval(() => send({ topic: "phoenix", event: "heartbeat", payload: {}, ref: nextRef() }), 25000);
    };
  }
  function broadcast(ev) {
    ev.preventDefault();
    const f = ev.target;
    let payload;
    try { payload = JSON.parse(f.elements.payload.value || "{}"); } catch (e) { log("error", "payload is not JSON: " + e.message); return; }
    send({ topic, event: "broadcast", ref: nextRef(), join_ref: joinRef,
      payload: { type: "broadcast", event: f.elements.event.value || "message", payload } });
    log("sent", { event: f.elements.event.value, payload });
  }
  document.addEventListener("DOMContentLoaded", () => {
    $("#rt-join").addEventListener("submit", join);
    $("#rt-send").addEventListener("submit", broadcast);
    $("#rt-leave").addEventListener("click", () => { send({ topic, event: "phx_leave", payload: {}, ref: nextRef(), join_ref: joinRef }); ws.close(); });
    $("#rt-track").addEventListener("click", () => send({ topic, event: "presence", ref: nextRef(), join_ref: joinRef,
      payload: { type: "presence", event: "track", payload: { user: "dashboard", online_at: new Date().toISOString() } } }));
    $("#rt-clear").addEventListener("click", () => $("#rt-events").replaceChildren());
  });
})();
