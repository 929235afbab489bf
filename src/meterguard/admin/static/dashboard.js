// The meterguard dashboard: plain script, no build step. It holds no token: the operator types one,
// it stays in sessionStorage (this tab only) and goes only to this origin's admin API.
"use strict";
(() => {
  const KEY = "meterguard.admin-token";
  const $ = (id) => document.getElementById(id);
  const MAX_CUSTOMERS = 200;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value; else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  async function api(path) {
    const token = sessionStorage.getItem(KEY);
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (response.status === 401) { const e = new Error("unauthorized"); e.status = 401; throw e; }
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  const fmt = (n) => n === null || n === undefined ? "∞" : Number(n).toLocaleString("en-US");

  function meter(kind, m) {
    const limit = m.included;
    const share = limit ? Math.min(1, m.used / limit) : 0;
    const bar = el("div", { class: "bar " + kind + (m.overage > 0 ? " over" : ""), title: kind });
    const fill = el("span");
    fill.style.width = (limit ? share * 100 : 0).toFixed(1) + "%";
    bar.append(fill);
    const label = fmt(m.used) + " / " + fmt(limit) + (m.overage > 0 ? " (+" + fmt(m.overage) + " over)" : "");
    return el("div", { class: "meter" }, bar, el("small", {}, label));
  }

  function show(signedIn) {
    $("login").hidden = signedIn;
    $("overview").hidden = !signedIn;
    $("logout").hidden = !signedIn;
    if (!signedIn) { $("detail").hidden = true; $("summary").textContent = ""; }
  }

  async function load() {
    const { customers } = await api("customers");
    const shown = customers.slice(0, MAX_CUSTOMERS);
    const usages = await Promise.all(shown.map((c) => api("customers/" + encodeURIComponent(c.id) + "/usage")
      .catch(() => null)));
    const body = $("customers").querySelector("tbody");
    body.replaceChildren();
    let overage = 0;
    shown.forEach((customer, i) => {
      const usage = usages[i];
      const row = el("tr", { class: "customer", "data-customer": customer.id });
      row.append(el("td", {}, customer.id), el("td", {}, customer.plan), el("td", {}, customer.status));
      if (usage) {
        const r = usage.rejected;
        overage += Number(usage.charges.overage);
        row.append(
          el("td", {}, meter("calls", usage.calls)),
          el("td", {}, meter("records", usage.records)),
          el("td", { class: "num" }, usage.charges.overage + " " + usage.charges.currency),
          el("td", { class: "num" }, usage.charges.total + " " + usage.charges.currency),
          el("td", { class: "num" }, r.rate_limited + " / " + r.quota + " / " + r.spend_cap),
        );
      } else {
        row.append(el("td", { colspan: "5" }, "usage unavailable"));
      }
      row.addEventListener("click", () => select(customer.id));
      body.append(row);
    });
    $("summary").textContent = customers.length + " customers · overage this period " + overage.toFixed(2);
    show(true);
    if (shown.length) await select(shown[0].id);
  }

  function chart(days) {
    const svg = $("chart");
    const NS = "http://www.w3.org/2000/svg";
    const W = 900, H = 220, left = 50, bottom = 24, top = 10;
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      return n;
    };
    svg.replaceChildren();
    const maxCalls = Math.max(1, ...days.map((d) => d.calls));
    const maxRecords = Math.max(1, ...days.map((d) => d.records));
    const step = (W - left - 10) / days.length;
    const y = (v, max) => H - bottom - (v / max) * (H - bottom - top);
    svg.append(node("line", { x1: left, x2: W - 10, y1: H - bottom, y2: H - bottom, stroke: "#ccc" }));
    svg.append(node("text", { x: 4, y: top + 10 }, fmt(maxCalls)));
    svg.append(node("text", { x: 4, y: H - bottom }, "0"));
    days.forEach((d, i) => {
      const x = left + i * step;
      const h = H - bottom - y(d.calls, maxCalls);
      const bar = node("rect", { x: x + 1, y: y(d.calls, maxCalls), width: Math.max(1, step - 2), height: h, fill: "#2e6bd9" });
      bar.append(node("title", {}, d.day + ": " + d.calls + " calls, " + d.records + " records"));
      svg.append(bar);
      if (i % 15 === 0 || i === days.length - 1) svg.append(node("text", { x: x, y: H - 6 }, d.day.slice(5)));
    });
    const points = days.map((d, i) => (left + i * step + step / 2).toFixed(1) + "," + y(d.records, maxRecords).toFixed(1));
    svg.append(node("polyline", { points: points.join(" "), fill: "none", stroke: "#d97706", "stroke-width": 2 }));
  }

  async function select(id) {
    for (const row of document.querySelectorAll("tr.customer")) row.classList.toggle("selected", row.dataset.customer === id);
    const base = "customers/" + encodeURIComponent(id);
    const [daily, keys] = await Promise.all([api(base + "/usage/daily?days=90"), api(base + "/keys")]);
    $("detail-title").textContent = id + ": last 90 days";
    chart(daily.days);
    const body = $("keys").querySelector("tbody");
    body.replaceChildren();
    for (const key of keys.keys) {
      // state: active, expiring (within 7 days), expired or revoked; a rotated-out key names its successor
      const state = key.state + (key.replaced_by ? " (replaced by " + key.replaced_by + ")" : "");
      body.append(el("tr", { class: "key " + key.state },
        el("td", {}, key.key_id), el("td", {}, key.prefix), el("td", {}, key.created || "(plans.yaml)"),
        el("td", {}, key.last_used || "never"), el("td", {}, key.expires_at || "no expiry"),
        el("td", { class: "state" }, state)));
    }
    $("detail").hidden = false;
  }

  async function start() {
    try {
      await load();
    } catch (error) {
      if (error.status === 401) {
        sessionStorage.removeItem(KEY);
        $("login-error").textContent = "That token was refused.";
      } else {
        $("login-error").textContent = String(error.message || error);
      }
      show(false);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("token").value);
      $("token").value = "";
      $("login-error").textContent = "";
      start();
    });
    $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); show(false); });
    if (sessionStorage.getItem(KEY)) start(); else show(false);
  });
})();
