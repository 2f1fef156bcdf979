// The minicloud console: the public API (/v1) in a page, signed in with a session.
// Everything shown is built with DOM nodes and textContent: nothing an API answer
// holds (names, reasons, log lines) is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let me = null; // {role, tenant, key_id, csrf_token}
let timer = null; // the current page's refresh

// --- DOM and API helpers ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replace an element's children (arrays flattened; null, undefined and false left out).
function show(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const link = (href, text) => h("a", { href }, text);
const badge = (s) => h("span", { class: "badge " + (s || "") }, s || "—");
const enc = encodeURIComponent;
const models = (w) => w.sku || (w.skus ? w.skus.join(" or ") : "any");
const fmt = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));

function table(columns, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing here yet.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h(
      "tbody",
      {},
      rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(r))))),
    ),
  );
}

function flash(message, kind) {
  const f = $("flash");
  f.textContent = message;
  f.className = kind || "";
  f.hidden = !message;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, headers) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...(headers || {}) } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && me) init.headers["X-CSRF-Token"] = me.csrf_token;
  const r = await fetch(path, init);
  const text = await r.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch (_) {
    doc = null;
  }
  if (!r.ok) {
    const e = (doc && doc.error) || {};
    if (r.status === 401 && path !== "/console/session") {
      me = null;
      render();
    }
    throw new ApiError(r.status, e.code || "http_" + r.status, e.message || r.statusText);
  }
  return doc;
}

function form(fields, submitText, onsubmit) {
  const el = h(
    "form",
    { class: "grid" },
    fields.map((f) =>
      f.type === "select"
        ? [h("label", { for: f.name }, f.label), h("select", { id: f.name, name: f.name }, f.options.map((o) => h("option", { value: o }, o)))]
        : [h("label", { for: f.name }, f.label), h("input", { id: f.name, name: f.name, type: f.type || "text", value: f.value, placeholder: f.placeholder, required: f.required, step: f.step })],
    ),
    h("div", { class: "full" }, h("button", { type: "submit" }, submitText)),
  );
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(el).entries());
    const button = el.querySelector("button");
    button.disabled = true;
    try {
      await onsubmit(values, el);
    } catch (e) {
      flash(e.message);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

// An operator's command answers 202 with an operation to follow until it settles.
async function settled(accepted) {
  for (let i = 0; i < 100; i++) {
    const op = await api("GET", "/v1/operations/" + enc(accepted.operation_id));
    if (op.status !== "pending") return op;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error("the command is still pending: look again in a moment");
}

function every(ms, fn) {
  timer = setInterval(() => fn().catch((e) => flash(e.message)), ms);
}

function chart(points, height) {
  // points: [{label, value, total}] as bars (value over total)
  const w = 800;
  const hgt = height || 160;
  const max = Math.max(1, ...points.map((p) => p.total || p.value));
  const bw = Math.max(1, w / Math.max(points.length, 1));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  points.forEach((p, i) => {
    for (const [v, cls] of [[p.total, "bar total"], [p.value, "bar"]]) {
      if (v === undefined) continue;
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const bh = (v / max) * (hgt - 10);
      r.setAttribute("x", i * bw + 1);
      r.setAttribute("y", hgt - bh);
      r.setAttribute("width", Math.max(1, bw - 2));
      r.setAttribute("height", bh);
      r.setAttribute("class", cls);
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
      t.textContent = p.label;
      r.append(t);
      svg.append(r);
    }
  });
  return svg;
}

// --- sign in --------------------------------------------------------------------------------

function signInPage() {
  return [
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "With an API key (mck_…). The key is checked and not kept: the console holds a session cookie, valid for 8 hours."),
    form([{ name: "key", label: "API key", type: "password", required: true, placeholder: "mck_..." }], "Sign in", async (v) => {
      me = await api("POST", "/console/session", { key: v.key });
      flash("");
      location.hash = me.role === "operator" ? "#/fleet" : "#/workloads";
      render();
    }),
  ];
}

async function signOut() {
  try {
    await api("DELETE", "/console/session");
  } catch (_) {
    /* the session is gone either way */
  }
  me = null;
  location.hash = "#/";
  render();
}

// --- tenant pages ---------------------------------------------------------------------------

async function workloadsPage(main) {
  const draw = async () => {
    const doc = await api("GET", "/v1/workloads?limit=200");
    const rows = doc.items.slice().reverse();
    show(main, 
      h("h1", {}, "Workloads"),
      h("div", { class: "actions" }, link("#/submit", "Submit a workload")),
      table(
        [
          { title: "Workload", cell: (w) => link("#/workloads/" + enc(w.workload_id), w.name || w.workload_id) },
          { title: "Status", cell: (w) => badge(w.status) },
          { title: "GPUs", num: true, cell: (w) => `${fmt(w.nodes)} × ${fmt(w.gpus_per_node)} ${models(w)}` },
          { title: "Class", cell: (w) => fmt(w.price_class) },
          { title: "Why waiting / outcome", cell: (w) => fmt(w.pending_reason || w.outcome || w.reason) },
          { title: "Charged", num: true, cell: (w) => (w.charge ? `${w.charge.amount} ${w.charge.currency}` : "—") },
        ],
        rows,
        "No workloads yet.",
      ),
    );
  };
  await draw();
  every(3000, draw);
}

async function workloadPage(main, id) {
  let since = "0";
  const pre = h("pre", { class: "logs", id: "logs" });
  const draw = async () => {
    const w = await api("GET", "/v1/workloads/" + enc(id));
    const logs = await api("GET", `/v1/workloads/${enc(id)}/logs?since=${enc(since)}`);
    for (const l of logs.lines) pre.append(`[${l.rank}] ${l.stream === "stderr" ? "! " : ""}${l.line}\n`);
    since = logs.next;
    const trace = await api("GET", `/v1/workloads/${enc(id)}/trace`);
    const actions = [];
    if (["accepted", "queued", "running"].includes(w.status)) {
      actions.push(h("button", { class: "danger", onclick: () => api("POST", `/v1/workloads/${enc(id)}/cancel`).then(draw, (e) => flash(e.message)) }, "Cancel"));
      if (w.status === "running" && !w.image)
        actions.push(h("button", { onclick: () => api("POST", `/v1/workloads/${enc(id)}/complete`).then(draw, (e) => flash(e.message)) }, "Complete"));
    }
    const a = w.allocation;
    show(main, 
      h("h1", {}, w.name || id, " ", h("span", { id: "status" }, badge(w.status))),
      h(
        "div",
        { class: "cards" },
        h("div", { class: "stat" }, "GPUs", h("b", {}, `${fmt(w.nodes)} × ${fmt(w.gpus_per_node)}`), h("span", { id: "models" }, models(w))),
        h("div", { class: "stat" }, "Price class", h("b", {}, fmt(w.price_class)), "priority " + fmt(w.priority)),
        h("div", { class: "stat" }, "Started", h("b", {}, fmt(w.started_at && w.started_at.slice(11, 19))), fmt(w.started_at && w.started_at.slice(0, 10))),
        h("div", { class: "stat" }, "Outcome", h("b", { id: "outcome" }, fmt(w.outcome)), w.exit_code !== null && w.exit_code !== undefined ? "exit code " + w.exit_code : ""),
        h("div", { class: "stat" }, "Charged", h("b", { id: "charged" }, w.charge ? `${w.charge.amount} ${w.charge.currency}` : "—"), w.charge ? `${w.charge.gpu_seconds} GPU-seconds` : ""),
      ),
      w.pending_reason ? h("p", {}, "Waiting: ", h("b", {}, w.pending_reason)) : null,
      w.reason && w.status !== "queued" ? h("p", {}, "Reason: ", w.reason) : null,
      h("div", { class: "actions" }, actions),
      a ? h("p", {}, "Allocation ", h("code", {}, a.allocation_id), ` — ${a.gpus} GPUs on ${a.hosts.join(", ")} (${a.sku}, ${a.region})`) : null,
      w.command ? h("p", {}, "Runs ", h("code", {}, (w.image || "") + "  " + w.command.join(" "))) : null,
      h("h2", {}, "Logs"),
      pre,
      h("h2", {}, "Invoice lines"),
      table(
        [
          { title: "Month", cell: (l) => l.month },
          { title: "Line", cell: (l) => link(`#/invoices/${enc(l.month)}/lines/${enc(l.line_id)}`, l.description) },
          { title: "GPU-seconds", num: true, cell: (l) => l.gpu_seconds },
        ],
        trace.invoice_lines,
        "Not on an invoice yet (charges show within seconds of usage).",
      ),
      h("h2", {}, "Trace"),
      h("p", { class: "muted" }, "Request ", h("code", {}, fmt(trace.correlation_id)), " — every event the cloud published about it."),
      table(
        [
          { title: "At", cell: (s) => s.at.slice(0, 19).replace("T", " ") },
          { title: "Event", cell: (s) => s.type.replace("minicloud.", "") },
          { title: "By", cell: (s) => s.producer },
          { title: "Status", cell: (s) => s.status },
        ],
        trace.steps,
      ),
    );
    return w;
  };
  const w = await draw();
  if (!["ended", "rejected"].includes(w.status) || !w.charge) every(2000, draw);
}

async function submitPage(main) {
  const skus = await api("GET", "/v1/skus");
  const key = crypto.randomUUID(); // one submission: a double click or retry is the same workload
  show(main, 
    h("h1", {}, "Submit a workload"),
    h("p", { class: "muted" }, "With an image and a command the cloud runs it on every node; without them you run it yourself and complete it."),
    form(
      [
        { name: "name", label: "Name", required: true, value: "my-job" },
        { name: "kind", label: "Kind", type: "select", options: ["training", "fine_tuning", "pre_training", "inference", "dev"] },
        { name: "sku", label: "GPU models (one, several separated by commas, or blank for any)", placeholder: skus.items.slice(0, 2).map((s) => s.sku).join(", ") },
        { name: "gpus_per_node", label: "GPUs per node", type: "number", value: 1, required: true },
        { name: "nodes", label: "Nodes", type: "number", value: 1, required: true },
        { name: "price_class", label: "Price class", type: "select", options: ["on_demand", "spot", "reserved"] },
        { name: "max_duration_s", label: "Max duration (s)", type: "number", value: 3600 },
        { name: "image", label: "Image", value: "minicloud/workload:bookworm" },
        { name: "command", label: "Command (argv, one per line, or a shell line)", value: "", placeholder: "python3 -c print(1)" },
      ],
      "Submit",
      async (v) => {
        const body = {
          name: v.name,
          kind: v.kind,
          gpus_per_node: Number(v.gpus_per_node),
          nodes: Number(v.nodes),
          price_class: v.price_class,
          max_duration_s: Number(v.max_duration_s),
        };
        const models = v.sku.split(",").map((m) => m.trim()).filter((m) => m);
        if (models.length === 1) body.sku = models[0];
        else if (models.length > 1) body.skus = models;
        if (v.command.trim()) {
          body.image = v.image;
          body.command = ["sh", "-c", v.command];
        }
        const r = await api("POST", "/v1/workloads", body, { "Idempotency-Key": key });
        location.hash = "#/workloads/" + enc(r.workload_id);
      },
    ),
  );
  const kind = main.querySelector("#kind");
  kind.value = "training";
}

async function usagePage(main) {
  const doc = await api("GET", "/v1/usage");
  const rows = doc.months.flatMap((m) => m.items.map((i) => ({ month: m.month, status: m.status, currency: m.currency, ...i })));
  const byMonth = doc.months.map((m) => ({ label: `${m.month}: ${m.items.reduce((s, i) => s + Number(i.gpu_hours), 0).toFixed(2)} GPU-hours`, value: m.items.reduce((s, i) => s + Number(i.gpu_hours), 0) }));
  show(main, 
    h("h1", {}, "Usage"),
    h("p", { class: "muted" }, "GPU-hours per month (the open month so far)."),
    byMonth.length ? chart(byMonth) : null,
    h("h2", {}, "By SKU and price class"),
    table(
      [
        { title: "Month", cell: (r) => [r.month, " ", badge(r.status)] },
        { title: "SKU", cell: (r) => fmt(r.sku) },
        { title: "Region", cell: (r) => fmt(r.region) },
        { title: "Class", cell: (r) => fmt(r.price_class) },
        { title: "GPU-hours", num: true, cell: (r) => r.gpu_hours },
        { title: "Amount", num: true, cell: (r) => `${r.amount} ${r.currency}` },
      ],
      rows,
      "No usage yet.",
    ),
  );
}

async function invoicesPage(main) {
  const doc = await api("GET", "/v1/invoices");
  show(main, 
    h("h1", {}, "Invoices"),
    table(
      [
        { title: "Month", cell: (i) => link("#/invoices/" + enc(i.month), i.month) },
        { title: "Status", cell: (i) => badge(i.status) },
        { title: "Total", num: true, cell: (i) => `${i.total} ${i.currency}` },
        { title: "As of", cell: (i) => i.as_of.slice(0, 19).replace("T", " ") },
      ],
      doc.items,
      "No invoices yet: the first charge opens the month's draft.",
    ),
  );
}

async function invoicePage(main, month) {
  const inv = await api("GET", "/v1/invoices/" + enc(month));
  show(main, 
    h("h1", {}, `Invoice ${inv.invoice_id} `, badge(inv.status)),
    h("p", { class: "muted" }, `${inv.month}, revision ${inv.revision}, as of ${inv.as_of}`),
    table(
      [
        { title: "Line", cell: (l) => link(`#/invoices/${enc(month)}/lines/${enc(l.line_id)}`, l.description) },
        { title: "Kind", cell: (l) => l.kind },
        { title: "Catalog", cell: (l) => fmt(l.catalog_version) },
        { title: "GPU-seconds", num: true, cell: (l) => l.gpu_seconds },
        { title: "Unit price", num: true, cell: (l) => l.unit_price },
        { title: "Amount", num: true, cell: (l) => l.amount },
      ],
      inv.lines,
    ),
    h("p", {}, h("b", { id: "invoice-total" }, `Total ${inv.total} ${inv.currency}`)),
  );
}

async function linePage(main, month, line) {
  const l = await api("GET", `/v1/invoices/${enc(month)}/lines/${enc(line)}`);
  show(main, 
    h("h1", {}, l.description),
    h("p", {}, link("#/invoices/" + enc(month), `Invoice ${l.invoice_id}`), " ", badge(l.status)),
    h("div", { class: "card" }, h("b", { id: "computation" }, l.computation), h("div", { class: "muted" }, `catalog ${fmt(l.catalog_version)}, ${l.price_class || ""} ${l.sku || ""} ${l.region || ""}`)),
    h("h2", {}, "Allocations on this line"),
    table(
      [
        { title: "Allocation", cell: (a) => h("code", {}, a.allocation_id) },
        { title: "Workload", cell: (a) => (a.workload_id ? link("#/workloads/" + enc(a.workload_id), a.workload_name || a.workload_id) : "—") },
        { title: "Usage records", num: true, cell: (a) => a.records },
        { title: "GPU-seconds", num: true, cell: (a) => a.gpu_seconds },
        { title: "GPU-hours", num: true, cell: (a) => a.gpu_hours },
      ],
      l.allocations,
    ),
  );
}

async function budgetPage(main) {
  const a = await api("GET", "/v1/budget");
  const row = (k, v) => h("tr", {}, h("th", {}, k), h("td", {}, fmt(v)));
  show(main, 
    h("h1", {}, "Budget and credit ", badge(a.state)),
    a.note ? h("p", { class: "muted" }, a.note) : null,
    h(
      "table",
      {},
      h(
        "tbody",
        {},
        row("Credits", a.credits),
        row("Credit limit", a.credit_limit),
        row("Charged (all time)", a.charged),
        row("Available", a.postpaid ? "postpaid" : a.available),
        row("This month", a.month_charged),
        row("Soft budget", a.soft_budget),
        row("Hard budget", a.hard_budget),
        row("Currency", a.currency),
      ),
    ),
    h("h2", {}, "Alerts"),
    table([{ title: "Alert", cell: (x) => JSON.stringify(x) }], a.alerts || [], "No budget alerts."),
  );
}

async function quotePage(main) {
  const skus = await api("GET", "/v1/skus");
  const out = h("div", { id: "quote" });
  show(main, 
    h("h1", {}, "Quote"),
    form(
      [
        { name: "sku", label: "GPU", type: "select", options: skus.items.map((s) => s.sku) },
        { name: "gpus", label: "GPUs", type: "number", value: 8, required: true },
        { name: "hours", label: "Hours", type: "number", value: 1, step: "any", required: true },
        { name: "price_class", label: "Price class", type: "select", options: ["on_demand", "spot", "reserved"] },
      ],
      "Quote",
      async (v) => {
        const q = await api("GET", `/v1/quote?sku=${enc(v.sku)}&gpus=${enc(v.gpus)}&hours=${enc(v.hours)}&price_class=${enc(v.price_class)}`);
        show(out, 
          h("h2", {}, `${q.amount} ${q.currency}`),
          table(
            [
              { title: "Catalog", cell: (p) => p.catalog_version },
              { title: "Unit price", num: true, cell: (p) => p.unit_price },
              { title: "GPU-seconds", num: true, cell: (p) => p.gpu_seconds },
              { title: "Amount", num: true, cell: (p) => p.amount },
            ],
            q.parts,
          ),
        );
      },
    ),
    out,
  );
}

async function pricesPage(main) {
  const [list, skus] = await Promise.all([api("GET", "/v1/prices"), api("GET", "/v1/skus")]);
  show(main, 
    h("h1", {}, "Prices"),
    h("p", { class: "muted" }, `Catalog ${list.version}, effective ${list.effective_at}, per GPU-hour in ${list.currency}.`),
    table(
      [
        { title: "SKU", cell: (p) => p.sku },
        { title: "Region", cell: (p) => p.region },
        { title: "Class", cell: (p) => p.price_class },
        { title: "Per GPU-hour", num: true, cell: (p) => p.per_gpu_hour },
      ],
      list.prices,
    ),
    list.upcoming.length ? h("h2", {}, "Upcoming: " + list.upcoming.map((u) => `${u.version} from ${u.effective_at}`).join(", ")) : null,
    h("h2", {}, "GPU models"),
    table(
      [
        { title: "SKU", cell: (s) => s.sku },
        { title: "Name", cell: (s) => s.name },
        { title: "Memory (GB)", num: true, cell: (s) => s.memory_gb },
        { title: "BF16 TFLOPS", num: true, cell: (s) => s.bf16_tflops },
        { title: "Interconnect", cell: (s) => `${s.interconnect} ${s.nvlink_gbps} GB/s` },
      ],
      skus.items,
    ),
  );
}

// --- operator pages -------------------------------------------------------------------------

const sorted = (obj) => Object.entries(obj).sort(([a], [b]) => a.localeCompare(b));

function gpuSquares(host) {
  const allocated = host.allocated;
  const faulted = new Set(host.faulted);
  const squares = [];
  let used = 0;
  for (let i = 0; i < host.gpus; i++) {
    let cls = "gpu";
    if (faulted.has(i)) cls += " faulted";
    else if (used < allocated) {
      cls += " allocated";
      used++;
    } else if (host.state === "draining") cls += " draining";
    squares.push(h("span", { class: cls, title: `GPU ${i}` }));
  }
  return h("span", { class: "gpus" }, squares);
}

async function fleetPage(main) {
  const draw = async () => {
    const [hosts, cap] = await Promise.all([api("GET", "/v1/hosts?limit=1000"), api("GET", "/v1/capacity")]);
    const tree = {};
    for (const host of hosts.items) {
      const z = ((tree[host.region] ||= {})[host.zone] ||= {});
      (z[host.rack] ||= []).push(host);
    }
    const f = cap.fleet;
    show(main, 
      h("h1", {}, "Fleet"),
      h(
        "div",
        { class: "cards" },
        h("div", { class: "stat" }, "GPUs", h("b", { id: "fleet-total" }, f.total), `${f.hosts} hosts`),
        h("div", { class: "stat" }, "Allocated", h("b", {}, f.allocated), `${(f.utilization * 100).toFixed(1)}% utilized`),
        h("div", { class: "stat" }, "Free", h("b", {}, f.free), `${f.draining} draining`),
        h("div", { class: "stat" }, "Faulted", h("b", {}, f.faulted), ""),
      ),
      sorted(tree).map(([region, zones]) =>
        h(
          "div",
          { class: "card" },
          h("b", {}, "Region " + region),
          sorted(zones).map(([zone, racks]) =>
            h(
              "div",
              { class: "tree" },
              h("div", {}, "Zone " + zone),
              sorted(racks).map(([rack, list]) =>
                h(
                  "div",
                  { class: "tree" },
                  h("div", {}, "Rack " + rack),
                  table(
                    [
                      { title: "Host", cell: (x) => x.host_id },
                      { title: "State", cell: (x) => [badge(x.state), x.reachable ? "" : [" ", badge("unreachable")]] },
                      { title: "SKU", cell: (x) => x.sku },
                      { title: "GPUs", cell: (x) => gpuSquares(x) },
                      { title: "Free", num: true, cell: (x) => x.free },
                      { title: "NVLink domain", cell: (x) => x.nvlink_domain },
                    ],
                    list,
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
      h("h2", {}, "Register a host"),
      form(
        [
          { name: "host_id", label: "Host id", required: true },
          { name: "region", label: "Region", value: "eu-1", required: true },
          { name: "zone", label: "Zone", value: "eu-1a", required: true },
          { name: "rack", label: "Rack", value: "eu-1a-r03", required: true },
          { name: "nvlink_domain", label: "NVLink domain", value: "eu-1a-r03-nvl0", required: true },
          { name: "sku", label: "SKU", value: "a100-80gb-sxm", required: true },
          { name: "gpu_count", label: "GPUs", type: "number", value: 8, required: true },
        ],
        "Register",
        async (v) => {
          const op = await settled(await api("POST", "/v1/hosts", { ...v, gpu_count: Number(v.gpu_count) }, { "Idempotency-Key": crypto.randomUUID() }));
          flash(op.status === "done" ? `host ${v.host_id} registered` : `refused: ${op.message || op.status}`, op.status === "done" ? "info" : "");
          await draw();
        },
      ),
    );
  };
  await draw();
}

async function capacityPage(main) {
  const [cap, hist] = await Promise.all([api("GET", "/v1/capacity"), api("GET", "/v1/capacity/history?limit=240")]);
  show(main, 
    h("h1", {}, "Capacity and utilization"),
    h("p", { class: "muted" }, `Allocated GPUs (dark) over the fleet's GPUs (light), one sample every ${hist.every_s} s: the last ${hist.items.length}, oldest on the left.`),
    hist.items.length ? chart(hist.items.map((s) => ({ label: `${s.at}: ${s.allocated}/${s.total}`, value: s.allocated, total: s.total }))) : h("p", { class: "muted" }, "No samples yet."),
    h("h2", {}, "Now, by SKU and region"),
    table(
      [
        { title: "SKU", cell: (r) => r.sku },
        { title: "Region", cell: (r) => r.region },
        { title: "Hosts", num: true, cell: (r) => r.hosts },
        { title: "GPUs", num: true, cell: (r) => r.total },
        { title: "Allocated", num: true, cell: (r) => r.allocated },
        { title: "Free", num: true, cell: (r) => r.free },
        { title: "Faulted", num: true, cell: (r) => r.faulted },
        { title: "Utilization", num: true, cell: (r) => (r.utilization * 100).toFixed(1) + "%" },
        { title: "BF16 PFLOPS", num: true, cell: (r) => r.bf16_pflops },
      ],
      cap.items,
    ),
  );
}

async function queuePage(main) {
  const draw = async () => {
    const q = await api("GET", "/v1/queue");
    show(main, 
      h("h1", {}, `Queue (${q.total})`),
      table(
        [
          { title: "Tenant", cell: (w) => w.tenant },
          { title: "Workload", cell: (w) => w.name || w.workload_id },
          { title: "Status", cell: (w) => badge(w.status) },
          { title: "GPUs", num: true, cell: (w) => `${fmt(w.nodes)} × ${fmt(w.gpus_per_node)} ${models(w)}` },
          { title: "Priority", num: true, cell: (w) => fmt(w.priority) },
          { title: "Waiting", num: true, cell: (w) => `${Math.floor(w.waiting_s / 60)} min` },
          { title: "Why", cell: (w) => fmt(w.pending_reason) },
        ],
        q.items,
        "Nothing waits.",
      ),
    );
  };
  await draw();
  every(3000, draw);
}

async function tenantsPage(main) {
  const doc = await api("GET", "/v1/tenants");
  show(main, 
    h("h1", {}, "Tenants"),
    table(
      [
        { title: "Tenant", cell: (t) => link("#/tenants/" + enc(t.tenant_id), t.tenant_id) },
        { title: "Name", cell: (t) => t.name },
        { title: "Keys active", num: true, cell: (t) => t.keys_active },
        { title: "Max priority", num: true, cell: (t) => t.max_priority },
        { title: "Created", cell: (t) => fmt(t.created_at) },
      ],
      doc.items,
      "No tenants yet.",
    ),
    h("h2", {}, "Create a tenant"),
    form(
      [
        { name: "tenant_id", label: "Tenant id", required: true, placeholder: "acme" },
        { name: "name", label: "Name", required: true, placeholder: "Acme Corp" },
      ],
      "Create",
      async (v) => {
        await api("POST", "/v1/tenants", v);
        location.hash = "#/tenants/" + enc(v.tenant_id);
      },
    ),
  );
}

async function tenantPage(main, id) {
  const accountBox = h("div", { id: "account" });
  const keysBox = h("div", { id: "keys" });
  const issued = h("div", { id: "issued" });
  const drawAccount = async () => {
    const a = await api("GET", `/v1/accounts/${enc(id)}`);
    show(
      accountBox,
      h("p", {}, "State ", badge(a.state), a.note ? h("span", { class: "muted" }, " — " + a.note) : null),
      a.credits !== undefined && a.credits !== null
        ? h("p", {}, `Credits ${a.credits}, credit limit ${a.credit_limit}, charged ${a.charged}, available ${a.postpaid ? "postpaid" : a.available} ${a.currency}`)
        : null,
    );
    return a;
  };
  const drawKeys = async () => {
    const keys = await api("GET", `/v1/tenants/${enc(id)}/keys`);
    show(
      keysBox,
      table(
        [
          { title: "Key id", cell: (k) => h("code", {}, k.key_id) },
          { title: "Created", cell: (k) => fmt(k.created_at) },
          { title: "Last used", cell: (k) => fmt(k.last_used_at) },
          { title: "State", cell: (k) => (k.revoked ? badge("revoked") : badge("active")) },
          {
            title: "",
            cell: (k) => (k.revoked ? "" : h("button", { class: "secondary", onclick: () => api("DELETE", `/v1/tenants/${enc(id)}/keys/${enc(k.key_id)}`).then(drawKeys, (e) => flash(e.message)) }, "Revoke")),
          },
        ],
        keys.items,
        "No keys yet.",
      ),
    );
  };
  await Promise.all([drawAccount(), drawKeys()]);
  show(
    main,
    h("h1", {}, "Tenant " + id),
    h("h2", {}, "Account"),
    accountBox,
    form(
      [
        { name: "amount", label: "Add credit", type: "number", step: "0.01", required: true, value: "500" },
        { name: "reference", label: "Reference (credited once)", required: true, value: "console-" + new Date().toISOString().slice(0, 19) },
      ],
      "Add credit",
      async (v) => {
        const op = await settled(await api("POST", `/v1/accounts/${enc(id)}/credits`, v, { "Idempotency-Key": crypto.randomUUID() }));
        flash(op.status === "done" ? `credited ${v.amount}` : `refused: ${op.message || op.status}`, op.status === "done" ? "info" : "");
        for (let i = 0; i < 20; i++) {
          const a = await drawAccount(); // billing's snapshot follows within a second or two
          if (a.credits !== undefined && a.credits !== null) break;
          await new Promise((r) => setTimeout(r, 250));
        }
      },
    ),
    h("h2", {}, "API keys"),
    keysBox,
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        {
          id: "issue-key",
          onclick: async () => {
            try {
              const k = await api("POST", `/v1/tenants/${enc(id)}/keys`);
              show(issued, h("p", {}, "The new key, shown once: give it to the tenant now."), h("div", { class: "key", id: "new-key" }, k.key));
              await drawKeys();
            } catch (e) {
              flash(e.message);
            }
          },
        },
        "Issue a key",
      ),
    ),
    issued,
  );
}

async function revenuePage(main) {
  const r = await api("GET", "/v1/revenue");
  show(main, 
    h("h1", {}, `Revenue ${r.month}: ${r.total} ${r.currency || ""}`),
    h("p", { class: "muted" }, `${r.tenants} tenants invoiced; invoices ${Object.entries(r.invoices).map(([k, v]) => `${v} ${k}`).join(", ") || "none"}.`),
    table(
      [
        { title: "SKU", cell: (x) => x.sku },
        { title: "Class", cell: (x) => x.price_class },
        { title: "Catalog", cell: (x) => fmt(x.catalog_version) },
        { title: "Kind", cell: (x) => x.kind },
        { title: "GPU-hours", num: true, cell: (x) => x.gpu_hours },
        { title: "Amount", num: true, cell: (x) => x.amount },
      ],
      r.items,
      "No charges this month yet.",
    ),
  );
}

async function deadLettersPage(main) {
  const d = await api("GET", "/v1/dead-letters");
  show(main, 
    h("h1", {}, `Dead letters (${d.total})`),
    h("p", { class: "muted" }, "Messages a consumer gave up on: each needs an operator (docs/operations.md)."),
    table(
      [
        { title: "Stream", cell: (s) => h("code", {}, s.stream) },
        { title: "Group", cell: (s) => s.group },
        { title: "Count", num: true, cell: (s) => s.count },
        { title: "Newest", cell: (s) => s.latest.map((x) => h("div", {}, `${fmt(x.at)} ${fmt(x.type)} (${fmt(x.kind)}): ${fmt(x.reason)}`)) },
      ],
      d.items.filter((s) => s.count > 0),
      "No dead letters.",
    ),
  );
}

// --- routing --------------------------------------------------------------------------------

const TENANT_NAV = [["#/workloads", "Workloads"], ["#/submit", "Submit"], ["#/usage", "Usage"], ["#/invoices", "Invoices"], ["#/budget", "Budget"], ["#/quote", "Quote"], ["#/prices", "Prices"]];
const OPERATOR_NAV = [["#/fleet", "Fleet"], ["#/capacity", "Capacity"], ["#/queue", "Queue"], ["#/tenants", "Tenants"], ["#/revenue", "Revenue"], ["#/dead-letters", "Dead letters"], ["#/prices", "Prices"]];

const ROUTES = [
  [/^#\/workloads$/, workloadsPage],
  [/^#\/workloads\/([^/]+)$/, workloadPage],
  [/^#\/submit$/, submitPage],
  [/^#\/usage$/, usagePage],
  [/^#\/invoices$/, invoicesPage],
  [/^#\/invoices\/([^/]+)$/, invoicePage],
  [/^#\/invoices\/([^/]+)\/lines\/(.+)$/, linePage],
  [/^#\/budget$/, budgetPage],
  [/^#\/quote$/, quotePage],
  [/^#\/prices$/, pricesPage],
  [/^#\/fleet$/, fleetPage],
  [/^#\/capacity$/, capacityPage],
  [/^#\/queue$/, queuePage],
  [/^#\/tenants$/, tenantsPage],
  [/^#\/tenants\/([^/]+)$/, tenantPage],
  [/^#\/revenue$/, revenuePage],
  [/^#\/dead-letters$/, deadLettersPage],
];

async function render() {
  clearInterval(timer);
  timer = null;
  const main = $("main");
  const nav = $("nav");
  const who = $("who");
  if (!me) {
    nav.replaceChildren();
    who.replaceChildren();
    show(main, ...signInPage());
    return;
  }
  const items = me.role === "operator" ? OPERATOR_NAV : TENANT_NAV;
  const hash = location.hash && location.hash !== "#/" ? location.hash : items[0][0];
  nav.replaceChildren(...items.map(([href, text]) => h("a", { href, class: hash.startsWith(href) ? "active" : null }, text)));
  who.replaceChildren(me.role === "operator" ? "operator" : "tenant " + me.tenant, h("button", { class: "secondary", id: "sign-out", onclick: signOut }, "Sign out"));
  const found = ROUTES.map(([re, page]) => [hash.match(re), page]).find(([m]) => m);
  if (!found) {
    show(main, h("h1", {}, "Not found"), h("p", {}, link(items[0][0], "Back")));
    return;
  }
  const [m, page] = found;
  show(main, h("p", { class: "muted" }, "Loading…"));
  try {
    await page(main, ...m.slice(1).map(decodeURIComponent));
  } catch (e) {
    if (e.status === 401) return;
    show(main, h("h1", {}, e.status === 404 ? "Not found" : "Error"), h("p", { id: "error" }, e.message));
  }
}

window.addEventListener("hashchange", () => {
  flash("");
  render();
});

(async () => {
  try {
    me = await api("GET", "/console/session");
  } catch (_) {
    me = null;
  }
  render();
})();
