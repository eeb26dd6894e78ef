// capillary's service map page: cards and arrows from /api/map, flows from /api/flows (SSE).
"use strict";

const CARD_W = 200, CARD_H = 74, GAP_X = 150, GAP_Y = 70, MAX_ROWS = 300;
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { namespace: "", selected: null, stream: null, shown: 0, matched: 0, flows: new Map() };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- the map ----------------------------------------------------------------------------

function layout(cards, namespace) {
  // world and host on the left, the namespace's workloads in a grid, other peers on the right
  const left = cards.filter((c) => !c.namespace && (c.key === "world" || c.key === "host"));
  const own = cards.filter((c) => c.namespace === namespace);
  const right = cards.filter((c) => !left.includes(c) && !own.includes(c));
  const cols = Math.max(1, Math.ceil(Math.sqrt(own.length)));
  const pos = new Map();
  left.forEach((c, i) => pos.set(c.key, { x: 20, y: 30 + i * (CARD_H + GAP_Y) * 2 }));
  own.forEach((c, i) => pos.set(c.key, {
    x: 20 + CARD_W + GAP_X + (i % cols) * (CARD_W + GAP_X), y: 30 + Math.floor(i / cols) * (CARD_H + GAP_Y) }));
  const rightX = 20 + (CARD_W + GAP_X) * (cols + 1);
  right.forEach((c, i) => pos.set(c.key, { x: rightX, y: 30 + i * (CARD_H + GAP_Y) }));
  return pos;
}

function edgePoint(box, toward) {
  // where the line from BOX's centre toward TOWARD leaves the box
  const cx = box.x + CARD_W / 2, cy = box.y + CARD_H / 2;
  const dx = toward.x - cx, dy = toward.y - cy;
  const scale = Math.min(Math.abs((CARD_W / 2) / (dx || 1e-9)), Math.abs((CARD_H / 2) / (dy || 1e-9)));
  return { x: cx + dx * scale, y: cy + dy * scale };
}

function drawCard(card, p) {
  const g = el("g", { class: "card" + (card.namespace ? "" : " reserved"), "data-card": card.key,
                      transform: `translate(${p.x},${p.y})` });
  g.appendChild(el("rect", { width: CARD_W, height: CARD_H, rx: 8 }));
  g.appendChild(el("text", { x: 10, y: 20, class: "name" }, card.namespace ? card.name : card.key));
  const pods = card.pods.length ? `${card.pods.length} pod${card.pods.length > 1 ? "s" : ""}` : "";
  g.appendChild(el("text", { x: 10, y: 38, class: "sub" }, [card.namespace, pods].filter(Boolean).join(" · ")));
  const ports = card.ports.length ? "reached on " + card.ports.join(", ") : "not reached (no flows seen)";
  const portsText = el("text", { x: 10, y: 58, class: "sub ports" }, ports.length > 34 ? ports.slice(0, 33) + "…" : ports);
  portsText.appendChild(el("title", {}, ports));
  g.appendChild(portsText);
  return g;
}

function drawLink(link, pos, index) {
  const a = pos.get(link.source), b = pos.get(link.destination);
  const id = `${link.source}|${link.destination}|${link.protocol}|${link.port}`;
  const g = el("g", { class: "link" + (state.selected === id ? " selected" : ""), "data-link": id,
                      "data-verdict": link.verdict, "data-source": link.source,
                      "data-destination": link.destination, "data-port": link.port });
  let d, label;
  if (link.source === link.destination) {
    const x = a.x + CARD_W - 30 - index * 12, y = a.y;
    d = `M${x},${y} C${x - 10},${y - 50} ${x + 40},${y - 50} ${x + 20},${y}`;
    label = { x: x + 8, y: y - 40 };
  } else {
    const ca = { x: a.x + CARD_W / 2, y: a.y + CARD_H / 2 }, cb = { x: b.x + CARD_W / 2, y: b.y + CARD_H / 2 };
    const s = edgePoint(a, cb), t = edgePoint(b, ca);
    // the links of one pair fan out: 0, +1, -1, +2, ... times the spacing
    const nx = -(t.y - s.y), ny = t.x - s.x, len = Math.hypot(nx, ny) || 1;
    const bend = 34 * (index % 2 ? (index + 1) / 2 : -index / 2);
    const cx = (s.x + t.x) / 2 + (nx / len) * bend * 2, cy = (s.y + t.y) / 2 + (ny / len) * bend * 2;
    d = `M${s.x},${s.y} Q${cx},${cy} ${t.x},${t.y}`;
    // the label sits on the curve's own midpoint
    label = { x: (s.x + 2 * cx + t.x) / 4 + 4, y: (s.y + 2 * cy + t.y) / 4 - 4 };
  }
  g.appendChild(el("path", { d, class: "hit" }));
  g.appendChild(el("path", { d, class: "line" }));
  const port = link.protocol === "ICMP" ? "ICMP" : `${link.port}/${link.protocol}`;
  g.appendChild(el("text", label, port));
  g.addEventListener("click", () => { state.selected = id; showLink(link); refreshMap(); });
  return g;
}

async function refreshMap() {
  if (!state.namespace) return;
  let map;
  try {
    map = await api(`/api/map?namespace=${encodeURIComponent(state.namespace)}`);
  } catch (err) {
    $("problem").textContent = `map unknown: ${err.message}`;
    return;
  }
  $("problem").textContent = map.pods_error ? `pods unknown: ${map.pods_error}` : "";
  $("backend").textContent = `backend: ${map.received.toLocaleString()} flows received (${map.rate.toLocaleString()}/s)`;
  const drawn = JSON.stringify([state.namespace, state.selected, map.cards, map.links]);
  if (drawn === state.drawn) return;      // redraw only what changed: clicks land on what they aimed at
  state.drawn = drawn;
  const pos = layout(map.cards, state.namespace);
  const cards = $("cards"), links = $("links");
  cards.replaceChildren(...map.cards.map((c) => drawCard(c, pos.get(c.key))));
  const pairs = new Map();
  links.replaceChildren(...map.links.map((l) => {
    const pair = [l.source, l.destination].sort().join("|");
    const n = pairs.get(pair) || 0;
    pairs.set(pair, n + 1);
    return drawLink(l, pos, n);
  }));
  let w = 0, h = 0;
  for (const p of pos.values()) { w = Math.max(w, p.x + CARD_W + 20); h = Math.max(h, p.y + CARD_H + 20); }
  $("map").setAttribute("width", w);
  $("map").setAttribute("height", h);
}

// ---- the panel: a link and its walk, or a flow -------------------------------------------

function showLink(link) {
  const panel = $("panel");
  const port = link.protocol === "ICMP" ? "ICMP" : `${link.protocol} ${link.port}`;
  panel.replaceChildren(html("h3", `${link.source} → ${link.destination}  ${port}`),
    html("p", `${link.forwarded} forwarded, ${link.dropped} dropped`, "link-counts"));
  const walkable = link.source_pod && link.destination_pod;
  const button = html("button", walkable ? `walk this: ${link.source_pod} → ${link.destination_pod}` : "walk this");
  button.id = "walk";
  button.disabled = !walkable;
  panel.appendChild(button);
  if (!walkable) panel.appendChild(html("p", "A walk sends a probe from one pod to another: it needs a pod at both ends.", "hint"));
  const out = html("div");
  out.id = "walk-result";
  panel.appendChild(out);
  button.addEventListener("click", () => runWalk(link, out, button));
}

async function runWalk(link, out, button) {
  button.disabled = true;
  out.replaceChildren(html("p", "walking… (a real probe is on its way)", "hint"));
  try {
    const body = { source: link.source_pod, destination: link.destination_pod, port: link.port,
                   protocol: { TCP: "tcp", UDP: "udp", ICMP: "icmp" }[link.protocol] || "tcp" };
    const { walk, text } = await api("/api/walk", { method: "POST", headers: { "Content-Type": "application/json" },
                                                     body: JSON.stringify(body) });
    const list = html("ol", undefined, "hops");
    for (const hop of walk.hops) {
      const li = html("li");
      li.appendChild(html("div", hop.where, "hop-where"));
      const what = html("div", hop.what + " ");
      if (hop.verdict) what.appendChild(html("span", hop.verdict, `badge ${hop.verdict}`));
      li.appendChild(what);
      for (const d of hop.details) li.appendChild(html("div", d, "stats"));
      list.appendChild(li);
    }
    const result = html("p");
    result.id = "walk-outcome";
    result.appendChild(html("span", walk.result, `badge ${walk.result}`));
    result.appendChild(document.createTextNode(" " + walk.reason));
    const raw = html("details");
    raw.appendChild(html("summary", "as `capillary walk` prints it"));
    raw.appendChild(html("pre", text));
    out.replaceChildren(list, result, raw);
  } catch (err) {
    out.replaceChildren(html("p", `walk failed: ${err.message}`, "problem"));
  } finally {
    button.disabled = false;
  }
}

// ---- the panel: a policy's preview (policy.preview; nothing is written) -------------------

function showPreview() {
  const panel = $("panel");
  const text = html("textarea");
  text.id = "preview-policy";
  text.rows = 14;
  text.placeholder = "a NetworkPolicy or CiliumNetworkPolicy, YAML or JSON";
  const button = html("button", "preview");
  button.id = "preview-run";
  const out = html("div");
  out.id = "preview-result";
  panel.replaceChildren(html("h3", "preview a policy"),
    html("p", "What applying it would change, cell by cell, with the node's own compiler; nothing is applied.", "hint"),
    text, button, out);
  button.addEventListener("click", () => runPreview(text.value, out, button));
}

async function runPreview(policy, out, button) {
  button.disabled = true;
  out.replaceChildren(html("p", "previewing…", "hint"));
  try {
    const { preview, text } = await api("/api/preview", { method: "POST", headers: { "Content-Type": "application/json" },
                                                           body: JSON.stringify({ policy }) });
    const changed = preview.cells.filter((c) => c.before.verdict !== c.after.verdict);
    const list = html("ul", undefined, "preview-cells");
    for (const c of changed) {
      const li = html("li");
      li.appendChild(html("div", `${c.source} → ${c.destination} ${c.protocol} ${c.port}`, "hop-where"));
      const what = html("div");
      what.appendChild(html("span", c.before.verdict, `badge ${c.before.verdict}`));
      what.appendChild(document.createTextNode(" → "));
      what.appendChild(html("span", c.after.verdict, `badge ${c.after.verdict}`));
      li.appendChild(what);
      li.appendChild(html("div", `${c.before.reason} → ${c.after.reason}`, "stats"));
      list.appendChild(li);
    }
    const summary = html("p", `${preview.kind.toLowerCase()}/${preview.name} would be ${preview.action}: ` +
      `${changed.length} of ${preview.cells.length} cells change`);
    summary.id = "preview-summary";
    const raw = html("details");
    raw.appendChild(html("summary", "as `capillary apply --dry-run` prints it"));
    raw.appendChild(html("pre", text));
    out.replaceChildren(summary, list, raw);
  } catch (err) {
    out.replaceChildren(html("p", `preview failed: ${err.message}`, "problem"));
  } finally {
    button.disabled = false;
  }
}

const RULES = ["ingress_allowed_by", "ingress_denied_by", "egress_allowed_by", "egress_denied_by"];

function attribution(flow) {
  const lines = [];
  for (const key of RULES) {
    for (const r of flow[key] || []) {
      const who = r.kind === "Default" ? r.name : `${r.kind} ${r.namespace ? r.namespace + "/" : ""}${r.name} rule ${r.rule_index}`;
      lines.push(`${key.replace(/_/g, " ")}: ${who}`);
    }
  }
  if (!lines.length) lines.push(flow.event_type && flow.event_type.type === 5 ? "a policy verdict without a rule"
    : "no policy decision in this event (a trace or a drop: see the policy verdict of the same packet)");
  return lines;
}

function showFlow(flow) {
  const panel = $("panel");
  panel.replaceChildren(html("h3", `${endpointName(flow.source)} → ${endpointName(flow.destination)}`));
  const attr = html("div");
  attr.id = "attribution";
  for (const line of attribution(flow)) attr.appendChild(html("div", line));
  panel.appendChild(html("h4", "policy"));
  panel.appendChild(attr);
  panel.appendChild(html("h4", "Hubble JSON"));
  const pre = html("pre", JSON.stringify(flow, null, 2));
  pre.id = "flow-json";
  panel.appendChild(pre);
}

// ---- the live flow table ----------------------------------------------------------------

function endpointName(ep) {
  if (!ep) return "";
  if (ep.namespace && ep.pod_name) return `${ep.namespace}/${ep.pod_name}`;
  const reserved = { 1: "host", 2: "world", 6: "remote-node" }[ep.identity];
  return reserved || `identity ${ep.identity}`;
}

function portOf(flow) {
  const l4 = flow.l4 || {};
  for (const [proto, v] of Object.entries(l4)) {
    if (v.destination_port !== undefined) return `${v.destination_port}/${proto}`;
    if (proto.startsWith("ICMP")) return proto;
  }
  return "";
}

function eventName(flow) {
  const t = flow.event_type || {};
  if (t.type === 1) return `drop: ${flow.drop_reason_desc || ""}`;
  if (t.type === 5) return `policy ${(flow.traffic_direction || "").toLowerCase()}`;
  if (t.type === 4) return `trace ${(flow.trace_observation_point || "").toLowerCase()}`;
  return String(t.type);
}

function addRows(flows) {
  const body = document.querySelector("#flows tbody");
  for (const flow of flows) {
    const tr = html("tr");
    tr.dataset.uuid = flow.uuid;
    tr.dataset.verdict = flow.verdict;
    const cells = [flow.time.slice(11, 23), endpointName(flow.source), endpointName(flow.destination),
                   portOf(flow), flow.verdict, eventName(flow), flow.Summary || ""];
    cells.forEach((text, i) => tr.appendChild(html("td", text, i === 4 ? `verdict-${flow.verdict}` : undefined)));
    tr.addEventListener("click", () => showFlow(flow));
    body.insertBefore(tr, body.firstChild);
  }
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

function openStream() {
  const q = new URLSearchParams({ verdict: $("f-verdict").value, namespace: $("f-namespace").value,
                                  pod: $("f-pod").value.trim(), port: $("f-port").value.trim() });
  if (state.stream && state.query === q.toString()) return;    // e.g. a text field losing focus
  state.query = q.toString();
  if (state.stream) state.stream.close();
  document.querySelector("#flows tbody").replaceChildren();
  state.shown = state.matched = 0;
  const stream = new EventSource(`/api/flows?${q}`);
  stream.addEventListener("flows", (ev) => {
    const batch = JSON.parse(ev.data);
    state.shown += batch.shown;
    state.matched += batch.matched;
    addRows(batch.flows);
    const pct = state.matched ? Math.round((100 * state.shown) / state.matched) : 100;
    $("sampled").textContent = `showing ${state.shown.toLocaleString()} of ${state.matched.toLocaleString()} ` +
      `matching flows${pct < 100 ? ` (sampled: ${pct}%)` : ""}`;
  });
  stream.onerror = () => { $("sampled").textContent = "flow stream interrupted: reconnecting…"; };
  state.stream = stream;
}

async function init() {
  let names = [];
  try {
    names = (await api("/api/namespaces")).namespaces;
  } catch (err) {
    $("problem").textContent = err.message;
  }
  const wanted = new URLSearchParams(location.search).get("namespace");
  state.namespace = names.includes(wanted) ? wanted : (names.find((n) => n !== "default") || names[0] || "default");
  for (const n of names) {
    const opt = html("option", n);
    opt.selected = n === state.namespace;
    $("namespace").appendChild(opt);
    $("f-namespace").appendChild(html("option", n));
  }
  $("namespace").addEventListener("change", () => { state.namespace = $("namespace").value; state.selected = null; refreshMap(); });
  for (const id of ["f-verdict", "f-namespace", "f-pod", "f-port"]) $(id).addEventListener("change", openStream);
  let typing;
  for (const id of ["f-pod", "f-port"]) {
    $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(openStream, 400); });
  }
  $("preview-open").addEventListener("click", showPreview);
  openStream();
  await refreshMap();
  setInterval(refreshMap, 1000);
}

init();
