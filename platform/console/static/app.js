// Shoal console. Plain DOM, no framework, no build step.
//
// Rules this file keeps (the tests check the first):
//  - Never parse strings as HTML: every server value reaches the page
//    through textContent or createTextNode.
//  - The token lives in sessionStorage only and travels only in the
//    Authorization header, to this origin.
"use strict";

const TOKEN_KEY = "shoal.token";
const STATS_WINDOW = 300; // seconds of history shown
const STATS_STEP = 5; // seconds per point
const POLL_MS = 2000;
const FUNCTIONS_MS = 10000; // list functions (a runner discovery) at most every 10 s
const CALLS_MS = 10000; // list calls and dead letters at most every 10 s unless asked
const CALL_POLL_MS = 500;
const CALL_POLL_MAX = 240; // follow an async call for at most 2 minutes
// CALL_URL is what a call's record URL may be: a path of this origin.
const CALL_URL = /^\/calls\/(?!\.\.?$)[A-Za-z0-9._-]+$/;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

// state is all the console knows; views render from it.
const state = {
  token: null,
  who: null, // GET /system/whoami
  view: "functions",
  session: 0, // bumps at each login and logout: a late answer of another session is dropped
  functions: null, // GET /system/functions
  functionsAt: 0, // when it was last asked for (Date.now())
  callsAt: 0, // when /system/calls and /system/dlq were last asked for
  forceCalls: false, // the next refresh of Calls asks at once (tab opened, Refresh)
  authTouched: false, // "Send my token" was set by hand for the function in the form
  cards: new Map(), // function name → its card's live parts
  polling: false,
  again: false, // a refresh waits for the one running
  followSeq: 0, // bumps to abandon following an async call
  lastRender: {}, // view part → JSON last rendered, to skip identical redraws
};

// ---- DOM helpers ---------------------------------------------------------

// el builds an element: el("td", {className: "num"}, "42", child...).
// Strings become text nodes; props are set as properties, never as HTML.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === "dataset") Object.assign(e.dataset, v);
      else e[k] = v;
    }
  }
  append(e, children);
  return e;
}

function append(parent, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    parent.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function clear(e) {
  e.replaceChildren();
  return e;
}

function show(e, on) {
  e.hidden = !on;
}

// ---- status line ---------------------------------------------------------

let statusSource = "";
let statusTimer = 0;

// setStatus shows a message in the status line; kind is "", "ok" (cleared
// after a few seconds) or "error". source tags who set it, so that a poll
// that recovers clears only its own error.
function setStatus(msg, kind, source) {
  const s = $("status");
  s.textContent = msg || "";
  s.className = "status" + (kind ? " " + kind : "");
  statusSource = source || "";
  clearTimeout(statusTimer);
  if (kind === "ok") statusTimer = setTimeout(() => clearStatus(source), 6000);
}

function clearStatus(source) {
  if (statusSource === source) setStatus("", "", "");
}

// ---- API -----------------------------------------------------------------

class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// readError turns a failed answer into an APIError, from the platform's
// JSON error shape when the body has it.
async function readError(res) {
  let code = "http_" + res.status;
  let message = res.status + " " + res.statusText;
  try {
    const body = await res.json();
    if (body && body.error && body.error.code) {
      code = body.error.code;
      message = body.error.message || code;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  const err = new APIError(res.status, code, message);
  const after = res.headers.get("Retry-After");
  if (after) err.retryAfter = after;
  return err;
}

function authHeaders(extra) {
  const h = new Headers(extra || {});
  if (state.token && !h.has("Authorization")) h.set("Authorization", "Bearer " + state.token);
  return h;
}

// staleError is what api throws when the session changed (a logout, a
// new login) while it waited: the answer belongs to a session that is
// over, and nothing may be shown or kept from it.
function staleError() {
  const err = new APIError(0, "stale", "the session changed");
  err.stale = true;
  return err;
}

// fatal reports whether err must end a refresh rather than be shown in
// it: the token was refused, or the session changed.
function fatal(err) {
  return err.status === 401 || err.stale === true;
}

// api calls a JSON route of the gateway with the token. A 401 ends the
// session; other failures throw an APIError; an answer that arrives after
// the session changed throws staleError.
async function api(method, path, body) {
  const session = state.session;
  const init = { method, headers: authHeaders({ Accept: "application/json" }), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (session !== state.session) throw staleError();
    throw new APIError(0, "network", "cannot reach the gateway: " + e.message);
  }
  if (session !== state.session) throw staleError();
  if (!res.ok) {
    const err = await readError(res);
    if (session !== state.session) throw staleError();
    if (res.status === 401 && state.token) logout("Logged out: " + err.message);
    throw err;
  }
  const data = await res.json();
  if (session !== state.session) throw staleError();
  return data;
}

// describe words an error for people; operator routes get their
// permission named.
function describe(err, perm) {
  if (err.status === 403 && err.code === "insufficient_scope" && perm) return "needs the " + perm + " permission";
  return err.message || String(err);
}

// ---- session -------------------------------------------------------------

let expiryTimer = 0;

async function login(username, password) {
  let res;
  try {
    res = await fetch("/function/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username, password }),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new APIError(0, "network", "cannot reach the gateway: " + e.message);
  }
  if (!res.ok) {
    const err = await readError(res);
    if (err.code === "invalid_credentials") err.message = "Wrong username or password.";
    if (err.code === "too_many_attempts") err.message = "Too many failed logins; try again" + (err.retryAfter ? " in " + err.retryAfter + " s." : " later.");
    throw err;
  }
  const body = await res.json();
  if (!body.access_token) throw new APIError(res.status, "bad_answer", "the auth function answered without an access_token");
  return body.access_token;
}

// begin checks token with whoami and, if it is good, opens the console.
async function begin(token) {
  state.session++;
  state.token = token;
  let who;
  try {
    who = await api("GET", "/system/whoami");
  } catch (err) {
    if (err.stale) return; // another login or a logout came first
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    throw err;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.who = who;
  $("who-name").textContent = who.subject || "(no subject)";
  const perms = who.permissions || [];
  $("who-perms").textContent = perms.length ? perms.join(", ") : "no permissions";
  $("who-perms").title = "Permissions: " + (perms.length ? perms.join(", ") : "none");
  show($("view-login"), false);
  show($("session"), true);
  show($("tabs"), true);
  $("login-pass").value = "";
  $("token-input").value = "";
  clearInterval(expiryTimer);
  updateExpiry();
  expiryTimer = setInterval(updateExpiry, 1000);
  setStatus("Logged in as " + who.subject + ".", "ok", "session");
  selectView(state.view);
}

function updateExpiry() {
  const e = $("who-expiry");
  const at = state.who && Date.parse(state.who.expires_at);
  if (!at) {
    e.textContent = "no expiry";
    return;
  }
  const left = Math.floor((at - Date.now()) / 1000);
  if (left <= 0) {
    logout("Your token expired; log in again.");
    return;
  }
  e.textContent = "expires in " + duration(left);
  e.title = "Token expires at " + new Date(at).toLocaleString();
  e.classList.toggle("soon", left < 300);
}

// logout forgets the token and everything read with it.
// Answers still on their way are dropped when they arrive (state.session).
function logout(reason) {
  clearInterval(expiryTimer);
  state.session++;
  state.token = null;
  state.who = null;
  state.followSeq++;
  state.lastRender = {};
  state.callsAt = 0;
  state.forceCalls = false;
  sessionStorage.removeItem(TOKEN_KEY);
  forgetFunctions();
  clear($("inv-result")).appendChild(el("p", { className: "hint" }, "The answer appears here."));
  // Nothing read or typed under this token stays for the next one.
  for (const id of ["inv-fn", "inv-path", "inv-headers", "inv-body"]) $(id).value = "";
  $("inv-url").textContent = "";
  state.authTouched = false;
  authDefault();
  hideTables("wk-table", "calls-table", "dlq-table");
  for (const id of ["fn-note", "wk-note", "calls-note", "calls-partial", "dlq-note"]) note(id, "");
  show($("session"), false);
  show($("tabs"), false);
  for (const v of document.querySelectorAll(".view")) show(v, false);
  show($("view-login"), true);
  setStatus(reason || "Logged out.", reason ? "error" : "", "session");
  $("login-user").focus();
}

// ---- views ---------------------------------------------------------------

const views = {
  functions: refreshFunctions,
  invoke: refreshInvoke,
  workers: refreshWorkers,
  calls: refreshCalls,
};

function selectView(name) {
  if (!Object.hasOwn(views, name)) name = "functions";
  state.view = name;
  if (name === "calls") state.forceCalls = true;
  for (const b of document.querySelectorAll("#tabs button")) {
    const on = b.dataset.view === name;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
  }
  for (const v of document.querySelectorAll(".view")) show(v, v.id === "view-" + name);
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  poll(true);
}

// poll refreshes the view shown, every POLL_MS while the page is visible;
// one refresh at a time. A refresh asked for during another (a tab switch
// while a slow listing runs) follows it at once, not at the next tick.
async function poll(now) {
  if (!state.token || document.hidden) return;
  if (state.polling) {
    if (now === true) state.again = true;
    return;
  }
  state.polling = true;
  try {
    await views[state.view]();
  } catch (err) {
    if (state.token && !err.stale) setStatus(describe(err), "error", "poll");
  } finally {
    state.polling = false;
  }
  if (state.again) {
    state.again = false;
    poll(true);
  }
}

// changed reports whether data differs from what part last rendered.
function changed(part, data) {
  const s = JSON.stringify(data);
  if (state.lastRender[part] === s) return false;
  state.lastRender[part] = s;
  return true;
}

// note shows a message in a view's note, or hides it for "". msg is a
// string or an array of strings and elements. A quiet note (quiet true)
// states a fact, such as an empty list; the others say what is wrong or
// missing.
function note(id, msg, quiet) {
  const n = $(id);
  const parts = Array.isArray(msg) ? msg : [msg];
  clear(n);
  append(n, parts);
  n.className = quiet ? "note quiet" : "note";
  show(n, parts.some((p) => p));
}

// hideTables empties and hides tables, so that nothing read by one
// session is on the page for the next.
function hideTables(...ids) {
  for (const id of ids) {
    clear($(id).tBodies[0]);
    show($(id), false);
    delete state.lastRender[id.replace(/-table$/, "")];
  }
}

function operatorRead() {
  return !state.who || !state.who.operator || state.who.operator.read !== false;
}

// ---- Functions -----------------------------------------------------------

// loadFunctions reads the catalog, at most every FUNCTIONS_MS: listing
// asks every runner. Until the first answer state.functions stays null.
async function loadFunctions() {
  if (Date.now() - state.functionsAt < FUNCTIONS_MS) return;
  state.functionsAt = Date.now();
  const fns = await api("GET", "/system/functions");
  state.functions = Array.isArray(fns) ? fns : [];
  const dl = $("inv-fns");
  if (changed("datalist", state.functions.map((f) => f.name))) {
    clear(dl);
    for (const f of state.functions) dl.appendChild(el("option", { value: f.name }));
  }
  authDefault();
}

// forgetFunctions drops the catalog and everything drawn from it.
function forgetFunctions() {
  state.functions = null;
  state.functionsAt = 0;
  for (const c of state.cards.values()) c.root.remove();
  state.cards.clear();
  clear($("inv-fns"));
  delete state.lastRender.datalist;
}

async function refreshFunctions() {
  show($("fn-window"), operatorRead());
  if (!operatorRead()) {
    forgetFunctions();
    note("fn-note", "Listing functions needs the system:read permission. You can still invoke the functions your token allows in Invoke.");
    return;
  }
  try {
    await loadFunctions();
  } catch (err) {
    if (fatal(err)) throw err;
    if (err.status === 403) {
      note("fn-note", "Listing functions " + describe(err, "system:read") + ". You can still invoke the functions your token allows in Invoke.");
      return;
    }
    throw err;
  }
  if (!state.functions) return; // the last listing failed; the next is due within FUNCTIONS_MS
  let stats = null;
  let statsErr = "";
  try {
    stats = await api("GET", "/system/stats?window=" + STATS_WINDOW + "&step=" + STATS_STEP);
  } catch (err) {
    if (fatal(err)) throw err;
    statsErr = "Live figures are unavailable: " + describe(err, "system:read");
  }
  note("fn-note", statsErr || (state.functions.length ? "" : "No function is deployed."), !statsErr);
  clearStatus("poll");
  renderFunctions(state.functions, stats);
}

function renderFunctions(fns, stats) {
  const byName = new Map();
  for (const s of (stats && stats.functions) || []) byName.set(s.name, s);
  const list = $("fn-list");
  const seen = new Set();
  for (const f of fns) {
    seen.add(f.name);
    let card = state.cards.get(f.name);
    if (!card) {
      card = buildCard(f.name);
      state.cards.set(f.name, card);
    }
    list.appendChild(card.root); // keeps the server's order (by name)
    updateCard(card, f, byName.get(f.name), stats);
  }
  for (const [name, card] of state.cards) {
    if (!seen.has(name)) {
      card.root.remove();
      state.cards.delete(name);
    }
  }
}

function buildCard(name) {
  const c = {};
  c.name = el("span", { className: "fn-name" }, name);
  c.meta = el("span", { className: "fn-meta" });
  c.desc = el("p", { className: "fn-desc" });
  c.chips = el("div", { className: "chips" });
  c.rate = el("dd");
  c.errors = el("dd");
  c.p50 = el("dd");
  c.p99 = el("dd");
  const fig = (label, dd) => el("div", null, el("dt", null, label), dd);
  c.chart = svg("svg", { class: "chart", viewBox: "0 0 360 96", role: "img" });
  c.chartTitle = svg("title", {}, "");
  const invoke = el("button", { type: "button", className: "small", onclick: () => pickFunction(name) }, "Invoke…");
  invoke.setAttribute("aria-label", "Invoke " + name);
  c.root = el("article", { className: "card fn-card", dataset: { fn: name } },
    el("div", { className: "fn-head" }, c.name, c.meta),
    c.desc,
    el("div", { className: "fn-tags" }, c.chips, invoke),
    el("dl", { className: "figures" }, fig("requests/s", c.rate), fig("error rate", c.errors), fig("p50", c.p50), fig("p99", c.p99)),
    c.chart);
  return c;
}

function updateCard(c, f, s, stats) {
  c.meta.textContent = "rev " + (f.revision ?? "–") + " · " + plural(f.runners || 0, "runner") + " · timeout " + (f.timeout || "–");
  c.meta.title = f.deployed ? "Deployed " + new Date(f.deployed).toLocaleString() : "";
  c.desc.textContent = f.description || "No description.";
  clear(c.chips);
  const perms = f.permissions || [];
  if (f.public) c.chips.appendChild(el("span", { className: "chip public", title: "callable without a token" }, "public"));
  for (const p of perms) c.chips.appendChild(el("span", { className: "chip perm", title: "required permission" }, p));
  if (!f.public && !perms.length) c.chips.appendChild(el("span", { className: "chip", title: "any valid token" }, "any token"));
  if (!f.runners) c.chips.appendChild(el("span", { className: "chip none", title: "invoking it answers 503 no_runner" }, "no runner"));
  if (f.async && f.async.enabled === false) c.chips.appendChild(el("span", { className: "chip" }, "sync only"));
  const h = f.handler || {};
  const kind = h.http ? "http" : h.exec ? "exec" : "";
  if (kind) c.chips.appendChild(el("span", { className: "chip", title: (h[kind].command || []).join(" ") + (f.code ? "\ncode " + f.code.digest : "") }, kind));
  const unservable = f.unservable || [];
  if (unservable.length) c.chips.appendChild(el("span", { className: "chip none", title: unservable.join("\n") }, "not servable on " + plural(unservable.length, "runner")));

  const t = (s && s.total) || null;
  c.rate.textContent = t ? num(t.rate) : "–";
  c.errors.textContent = t ? pct(t.error_rate) : "–";
  c.errors.classList.toggle("bad", !!t && t.error_rate > 0);
  c.errors.title = t ? t.errors + " errors (5xx), " + t.client_errors + " client errors (4xx) of " + t.requests + " requests" : "";
  c.p50.textContent = t ? ms(t.p50_ms) : "–";
  c.p99.textContent = t ? ms(t.p99_ms) : "–";
  drawChart(c, (s && s.series) || [], stats ? stats.window : STATS_WINDOW);
}

// drawChart draws requests/s as bars (the part that failed in red) and
// the p99 latency as a line on its own scale, oldest left.
function drawChart(c, series, span) {
  const W = 360, H = 96, L = 34, R = 40, T = 8, B = 16;
  const w = W - L - R, h = H - T - B;
  const n = Math.max(series.length, 1);
  const maxRate = niceMax(Math.max(0, ...series.map((p) => p.rate || 0)));
  const maxP99 = niceMax(Math.max(0, ...series.map((p) => p.p99_ms || 0)));
  const g = [];
  g.push(svg("line", { class: "grid", x1: L, x2: L + w, y1: T, y2: T }));
  g.push(svg("line", { class: "grid", x1: L, x2: L + w, y1: T + h / 2, y2: T + h / 2 }));
  const bw = w / n;
  series.forEach((p, i) => {
    if (!p.requests) return;
    const x = L + i * bw + 0.5;
    const bh = Math.max(1, (p.rate / maxRate) * h);
    g.push(svg("rect", { class: "bar", x: x.toFixed(1), y: (T + h - bh).toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: bh.toFixed(1) }));
    const bad = p.requests ? (p.errors / p.requests) * bh : 0;
    if (bad > 0) g.push(svg("rect", { class: "bar err", x: x.toFixed(1), y: (T + h - bad).toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: bad.toFixed(1) }));
  });
  const pts = [];
  series.forEach((p, i) => {
    if (p.requests) pts.push((L + (i + 0.5) * bw).toFixed(1) + "," + (T + h - (p.p99_ms / maxP99) * h).toFixed(1));
  });
  if (pts.length > 1) g.push(svg("polyline", { class: "p99", points: pts.join(" ") }));
  else if (pts.length === 1) {
    const [x, y] = pts[0].split(",");
    g.push(svg("circle", { class: "p99", cx: x, cy: y, r: 2 }));
  }
  g.push(svg("line", { class: "axis", x1: L, x2: L + w, y1: T + h, y2: T + h }));
  g.push(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: T + h }));
  g.push(svg("text", { x: L - 4, y: T + 4, "text-anchor": "end" }, num(maxRate)));
  g.push(svg("text", { x: L - 4, y: T + h, "text-anchor": "end" }, "0"));
  g.push(svg("text", { x: 2, y: T + h / 2 + 3 }, "req/s"));
  g.push(svg("text", { class: "p99", x: L + w + 4, y: T + 4 }, ms(maxP99)));
  g.push(svg("text", { class: "p99", x: L + w + 4, y: T + h / 2 + 3 }, "p99"));
  g.push(svg("text", { x: L, y: H - 3 }, "−" + duration(span)));
  g.push(svg("text", { x: L + w, y: H - 3, "text-anchor": "end" }, "now"));
  const total = series.reduce((a, p) => a + (p.requests || 0), 0);
  if (!total) g.push(svg("text", { class: "empty", x: L + w / 2, y: T + h / 2 + 3, "text-anchor": "middle" }, "no requests"));
  c.chartTitle.textContent = "Requests per second and p99 latency over the last " + duration(span) + ": " + total + " requests.";
  c.chart.replaceChildren(c.chartTitle, ...g);
}

// niceMax rounds a scale's top up to 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ---- Invoke --------------------------------------------------------------

// refreshInvoke reads the catalog for the function picker and for the
// default of "Send my token", when the token may.
async function refreshInvoke() {
  if (state.functions || !operatorRead()) return;
  try {
    await loadFunctions();
  } catch (err) {
    if (fatal(err)) throw err;
    // the picker stays a free text field
  }
}

function pickFunction(name) {
  $("inv-fn").value = name;
  state.authTouched = false;
  authDefault();
  selectView("invoke");
  $("inv-path").focus();
}

// authDefault sets "Send my token" for the function in the form, unless
// it was set by hand since the function was chosen: off for a function
// the catalog says is public, whose code would receive the token (one
// that may hold system:write) without needing it; on for any other, and
// when the catalog is unknown (a token without system:read), since the
// token is what lets its user invoke anything.
function authDefault() {
  if (state.authTouched) return;
  const name = $("inv-fn").value.trim();
  const f = state.functions && state.functions.find((x) => x.name === name);
  const pub = !!(f && f.public);
  $("inv-auth").checked = !pub;
  $("inv-auth-why").textContent = pub ? name + " is public: it needs no token." : "";
}

// request reads the Invoke form into a fetch request for prefix
// ("/function/" or "/async-function/").
function request(prefix) {
  const name = $("inv-fn").value.trim();
  if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new Error("Pick a function: a name of letters, digits, - and _.");
  let sub = $("inv-path").value.trim();
  if (sub && !sub.startsWith("/") && !sub.startsWith("?")) sub = "/" + sub;
  const method = $("inv-method").value;
  const headers = new Headers();
  const lines = $("inv-headers").value.split("\n");
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    const at = line.indexOf(":");
    if (at <= 0) throw new Error("Headers, line " + (i + 1) + ": write Name: value");
    try {
      headers.append(line.slice(0, at).trim(), line.slice(at + 1).trim());
    } catch (e) {
      throw new Error("Headers, line " + (i + 1) + ": " + e.message);
    }
  });
  // A typed Authorization header wins over the box.
  const token = $("inv-auth").checked && !headers.has("Authorization");
  const init = { method, headers: token ? authHeaders(headers) : headers, cache: "no-store", credentials: "omit", redirect: "manual" };
  const body = $("inv-body").value;
  if (body) {
    if (method === "GET" || method === "HEAD") throw new Error(method + " requests carry no body: pick POST, PUT or PATCH, or clear the body.");
    init.body = body;
  }
  return { url: prefix + encodeURIComponent(name) + sub, init, name, token };
}

async function invoke(async) {
  const seq = ++state.followSeq;
  let req;
  try {
    req = request(async ? "/async-function/" : "/function/");
  } catch (e) {
    setStatus(e.message, "error", "invoke");
    return;
  }
  $("inv-url").textContent = req.init.method + " " + req.url;
  const out = clear($("inv-result"));
  out.appendChild(el("p", { className: "hint" }, "Sending…"));
  for (const b of [$("inv-send"), $("inv-async")]) b.disabled = true;
  const started = performance.now();
  let res, text;
  try {
    res = await fetch(req.url, req.init);
    text = await res.text();
  } catch (e) {
    setStatus("Cannot reach the gateway: " + e.message, "error", "invoke");
    clear(out);
    return;
  } finally {
    for (const b of [$("inv-send"), $("inv-async")]) b.disabled = false;
  }
  const took = performance.now() - started;
  if (seq !== state.followSeq) return;
  clearStatus("invoke");
  const headers = [...res.headers].map(([k, v]) => k + ": " + v).join("\n");
  clear(out);
  append(out, [
    el("h3", null, async ? "Submission" : "Answer"),
    el("div", { className: "result-line" },
      el("span", { className: "code " + statusClass(res.status), id: async ? "inv-sub-status" : "inv-status" }, String(res.status || "–")),
      el("span", null, res.type === "opaqueredirect" ? "a redirect, not followed" : res.statusText || ""),
      el("span", { className: "hint", id: "inv-duration" }, took.toFixed(1) + " ms")),
    el("h3", null, "Headers"),
    el("pre", { className: "headers" }, headers || "(none)"),
    el("h3", null, "Body"),
    el("pre", { id: async ? "inv-sub-body" : "inv-body-out" }, text === "" ? "(empty)" : text),
  ]);
  // A 401 invalid_token may be the function's own answer, not the
  // gateway's: the session ends only if the gateway refuses the token too.
  if (res.status === 401 && req.token && errorCode(text) === "invalid_token") {
    api("GET", "/system/whoami").catch(() => {}); // api logs out on a 401
    return;
  }
  if (async && res.status === 202) {
    let accepted = null;
    try {
      accepted = JSON.parse(text);
    } catch (_) {
      // shown above as it came
    }
    if (accepted && accepted.id) follow(accepted, seq, out);
  }
}

// callURL is where the record of an accepted call is read, with the
// token: only ever a /calls/ path of this origin.
function callURL(accepted) {
  const url = accepted.url === undefined ? "/calls/" + encodeURIComponent(String(accepted.id)) : accepted.url;
  return typeof url === "string" && CALL_URL.test(url) ? url : "";
}

// follow polls an accepted asynchronous call until it ends, then shows
// its result.
async function follow(accepted, seq, out) {
  const box = el("div", { className: "follow" });
  const stateLine = el("p", { className: "hint", id: "inv-call-state" }, "Call " + accepted.id + ": queued");
  box.append(el("h3", null, "Result of the call"), stateLine);
  out.prepend(box);
  const url = callURL(accepted);
  if (!url) {
    stateLine.textContent = "Not following call " + accepted.id + ": its URL is not a /calls/ path of this gateway.";
    return;
  }
  const started = performance.now();
  for (let i = 0; i < CALL_POLL_MAX; i++) {
    await sleep(i === 0 ? 100 : CALL_POLL_MS);
    if (seq !== state.followSeq || !state.token) return;
    let rec;
    try {
      rec = await api("GET", url);
    } catch (err) {
      if (err.stale || seq !== state.followSeq) return;
      stateLine.textContent = "Cannot read the call: " + describe(err);
      // 4xx: unknown or expired (404), refused (401, 403), asking again
      // will not change it. 5xx and the network: retry within the bound.
      if (err.status >= 400 && err.status < 500) return;
      stateLine.textContent += "; retrying";
      continue;
    }
    if (seq !== state.followSeq) return;
    stateLine.textContent = "Call " + rec.id + ": " + rec.status + " (attempt " + (rec.attempts || 0) + " of " + (rec.max_attempts || "?") + ")";
    if (rec.status === "succeeded" || rec.status === "failed") {
      stateLine.textContent += " after " + ((performance.now() - started) / 1000).toFixed(1) + " s";
      box.append(...callResult(rec));
      return;
    }
  }
  stateLine.textContent += " — stopped following after " + (CALL_POLL_MAX * CALL_POLL_MS) / 1000 + " s; see Calls.";
}

function callResult(rec) {
  const parts = [];
  if (rec.error) parts.push(el("p", { className: "note" }, (rec.error.code || "error") + ": " + (rec.error.message || "")));
  const r = rec.response;
  if (!r) {
    parts.push(el("p", { className: "hint" }, "No response was recorded."));
    return parts;
  }
  const headers = Object.entries(r.headers || {}).map(([k, vs]) => (Array.isArray(vs) ? vs : [vs]).map((v) => k + ": " + v).join("\n")).join("\n");
  let body;
  if (r.body_dropped) body = "(the body was too large to keep)";
  else if (!r.body) body = "(empty)";
  else {
    try {
      body = decodeBase64(r.body);
    } catch (e) {
      body = "(cannot decode the body: " + e.message + ")";
    }
  }
  parts.push(
    el("div", { className: "result-line" },
      el("span", { className: "code " + statusClass(r.status), id: "inv-call-status" }, String(r.status)),
      el("span", { className: "hint" }, "the function's answer")),
    el("h3", null, "Headers"),
    el("pre", { className: "headers" }, headers || "(none)"),
    el("h3", null, "Body"),
    el("pre", { id: "inv-call-body" }, body));
  return parts;
}

function decodeBase64(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder("utf-8").decode(bytes);
}

function errorCode(text) {
  try {
    const b = JSON.parse(text);
    return (b && b.error && b.error.code) || "";
  } catch (_) {
    return "";
  }
}

function statusClass(s) {
  return s >= 500 ? "s5" : s >= 400 ? "s4" : s >= 200 && s < 300 ? "s2" : "pending";
}

// ---- Workers -------------------------------------------------------------

async function refreshWorkers() {
  if (!operatorRead()) {
    hideTables("wk-table");
    note("wk-note", "Workers: needs the system:read permission");
    return;
  }
  let ws;
  try {
    ws = await api("GET", "/system/workers");
  } catch (err) {
    if (fatal(err)) throw err;
    hideTables("wk-table");
    if (err.status === 404 && err.code === "not_found") note("wk-note", "This gateway does not supervise workers (not shoal up).");
    else note("wk-note", "Workers: " + describe(err, "system:read"));
    return;
  }
  note("wk-note", ws.length ? "" : "No worker.", true);
  clearStatus("poll");
  if (!changed("wk", ws)) return;
  const tb = clear($("wk-table").tBodies[0]);
  for (const w of ws) {
    tb.appendChild(el("tr", null,
      el("td", { className: "num" }, String(w.worker)),
      el("td", { className: "num" }, w.pid ? String(w.pid) : "–"),
      el("td", null, el("span", { className: "state " + cssWord(w.state) }, w.state || "–")),
      el("td", { title: w.started ? "since " + new Date(w.started).toLocaleString() : "" }, w.uptime || "–"),
      el("td", { className: "num" }, String(w.restarts ?? 0)),
      el("td", { className: "num" }, String(w.served ?? 0)),
      el("td", { className: "err" }, w.last_exit || "")));
  }
  show($("wk-table"), ws.length > 0);
}

// ---- Calls ---------------------------------------------------------------

// refreshCalls lists the recent calls and the dead letters, which can be
// expensive to read: when the tab opens, on Refresh and after a
// dead-letter action, otherwise at most every CALLS_MS.
async function refreshCalls() {
  const force = state.forceCalls;
  state.forceCalls = false;
  if (!operatorRead()) {
    hideTables("calls-table", "dlq-table");
    note("calls-note", "Recent calls: needs the system:read permission");
    note("calls-partial", "");
    note("dlq-note", "Dead letters: needs the system:read permission");
    return;
  }
  if (!force && Date.now() - state.callsAt < CALLS_MS) return;
  state.callsAt = Date.now();
  const [calls, dlq] = await Promise.allSettled([api("GET", "/system/calls?limit=50"), api("GET", "/system/dlq")]);
  for (const r of [calls, dlq]) if (r.status === "rejected" && fatal(r.reason)) throw r.reason;
  if (calls.status === "rejected") {
    hideTables("calls-table");
    note("calls-note", "Recent calls: " + describe(calls.reason, "system:read"));
    note("calls-partial", "");
  } else {
    const list = calls.value.calls || [];
    // The gateway may leave records out of the list, and says so.
    const partial = [];
    if (calls.value.truncated) partial.push("list truncated: records too large");
    if (calls.value.skipped > 0) partial.push(plural(calls.value.skipped, "record") + " could not be read");
    note("calls-note", list.length || partial.length ? "" : "No asynchronous call yet.", true);
    note("calls-partial", partial.join("; "), true);
    if (changed("calls", list)) renderCalls(list);
    show($("calls-table"), list.length > 0);
  }
  if (dlq.status === "rejected") {
    hideTables("dlq-table");
    if (dlq.reason.status === 501 && dlq.reason.code === "not_implemented") {
      note("dlq-note", ["Dead letters are managed with ", el("code", null, "shoal calls dlq"), " on this deployment (this gateway cannot read them)."], true);
    } else {
      note("dlq-note", "Dead letters: " + describe(dlq.reason, "system:read"));
    }
  } else {
    const list = dlq.value.dead_letters || [];
    const ro = state.who && state.who.operator && state.who.operator.write === false;
    note("dlq-note", list.length ? (ro ? "Retry and Discard need the system:write permission." : "") : "No dead letter.", !list.length);
    if (changed("dlq", list)) renderDLQ(list);
    show($("dlq-table"), list.length > 0);
  }
  if (calls.status === "fulfilled" && dlq.status === "fulfilled") clearStatus("poll");
}

function renderCalls(list) {
  const tb = clear($("calls-table").tBodies[0]);
  for (const c of list) {
    tb.appendChild(el("tr", null,
      el("td", { className: "id" }, c.id),
      el("td", null, c.function),
      el("td", null, el("span", { className: "state " + cssWord(c.status) }, c.status)),
      el("td", { className: "num" }, (c.attempts ?? 0) + " / " + (c.max_attempts ?? "?")),
      el("td", { title: c.submitted_at || "" }, when(c.submitted_at)),
      el("td", { className: "err" }, c.error ? c.error.code + ": " + c.error.message : "")));
  }
}

function renderDLQ(list) {
  const tb = clear($("dlq-table").tBodies[0]);
  for (const d of list) {
    const retry = el("button", { type: "button", className: "small retry", onclick: () => dlqAction(d, "retry") }, "Retry");
    const discard = el("button", { type: "button", className: "small danger discard", onclick: () => dlqAction(d, "discard") }, "Discard");
    retry.setAttribute("aria-label", "Retry call " + d.id);
    discard.setAttribute("aria-label", "Discard call " + d.id);
    tb.appendChild(el("tr", { dataset: { id: d.id } },
      el("td", { className: "id" }, d.id),
      el("td", null, d.function),
      el("td", { className: "num" }, String(d.attempts ?? "")),
      el("td", { title: d.failed_at || "" }, when(d.failed_at)),
      el("td", { className: "err" }, d.error ? d.error.code + ": " + d.error.message : ""),
      el("td", { className: "num" }, d.body_dropped ? "dropped" : bytes(d.size || 0)),
      el("td", { className: "btns" }, retry, discard)));
  }
}

async function dlqAction(d, action) {
  if (action === "discard" && !confirm("Discard the dead letter of call " + d.id + " (" + d.function + ")? Its request is lost for good.")) return;
  const id = encodeURIComponent(d.id);
  try {
    if (action === "retry") {
      const r = await api("POST", "/system/dlq/" + id + "/retry");
      setStatus("Call " + r.id + " queued again.", "ok", "dlq");
    } else {
      await api("DELETE", "/system/dlq/" + id);
      setStatus("Dead letter " + d.id + " discarded.", "ok", "dlq");
    }
  } catch (err) {
    if (err.stale) return;
    const verb = action === "retry" ? "Retry" : "Discard";
    setStatus(verb + " of " + d.id + " failed: " + (err.code === "insufficient_scope" ? "needs system:write" : err.message), "error", "dlq");
  }
  state.lastRender.dlq = "";
  state.forceCalls = true;
  poll(true);
}

// ---- formatting ----------------------------------------------------------

function num(v) {
  if (!(v > 0)) return "0";
  if (v < 0.01) return "<0.01";
  const s = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}
function pct(v) {
  if (!(v > 0)) return "0%";
  return (v * 100 < 0.1 ? "<0.1" : (v * 100).toFixed(v < 0.1 ? 1 : 0)) + "%";
}
function ms(v) {
  if (!(v > 0)) return "–";
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
  return (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + " ms";
}
function bytes(n) {
  return n < 1024 ? n + " B" : n < 1 << 20 ? (n / 1024).toFixed(1) + " KiB" : (n / (1 << 20)).toFixed(1) + " MiB";
}
function duration(s) {
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return h + "h" + String(m).padStart(2, "0") + "m";
  if (m) return m + "m" + (r ? String(r).padStart(2, "0") + "s" : "");
  return r + "s";
}
function when(t) {
  if (!t) return "–";
  const d = new Date(t);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}
function cssWord(s) {
  return String(s || "").replace(/[^a-z_-]/gi, "");
}
function sleep(msec) {
  return new Promise((r) => setTimeout(r, msec));
}

// ---- start ---------------------------------------------------------------

function start() {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = $("login-user").value.trim();
    setStatus("Logging in…", "", "session");
    try {
      await begin(await login(user, $("login-pass").value));
    } catch (err) {
      setStatus(err.message, "error", "session");
    }
  });
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const tok = $("token-input").value.trim().replace(/^Bearer\s+/i, "");
    try {
      await begin(tok);
    } catch (err) {
      setStatus("That token does not work: " + err.message, "error", "session");
    }
  });
  $("logout").addEventListener("click", () => logout());
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => selectView(b.dataset.view));
  $("tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const names = Object.keys(views);
    const i = (names.indexOf(state.view) + (e.key === "ArrowRight" ? 1 : names.length - 1)) % names.length;
    selectView(names[i]);
    $("tab-" + names[i]).focus();
  });
  $("invoke-form").addEventListener("submit", (e) => {
    e.preventDefault();
    invoke(false);
  });
  $("inv-async").addEventListener("click", () => invoke(true));
  $("inv-fn").addEventListener("input", () => {
    state.authTouched = false;
    authDefault();
  });
  $("inv-auth").addEventListener("change", () => {
    state.authTouched = true;
    $("inv-auth-why").textContent = "";
  });
  $("calls-refresh").addEventListener("click", () => {
    state.lastRender.calls = state.lastRender.dlq = "";
    state.forceCalls = true;
    poll(true);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll(true);
  });
  setInterval(poll, POLL_MS);

  const hash = location.hash.slice(1);
  if (Object.hasOwn(views, hash)) state.view = hash;
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    begin(saved).catch((err) => logout("Logged out: " + err.message));
  } else {
    $("login-user").focus();
  }
}

start();
