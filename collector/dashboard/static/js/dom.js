// Building the page. Every string from the game (names, teams, arenas) is chosen by a
// stranger: it goes into the page as text (textContent), never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

// A table: columns [{label, cell(row) -> Node|string, num?: bool}], one tr per row.
export function table(columns, rows, { rowAttrs = () => ({}), empty = "Nothing yet." } = {}) {
  const body = h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row),
    columns.map((col) => h("td", { class: col.num ? "num" : null }, col.cell(row))))));
  const t = h("table", {},
    h("thead", {}, h("tr", {}, columns.map((col) =>
      h("th", { class: col.num ? "num" : null, scope: "col", title: col.title || null },
        col.label)))),
    body);
  if (!rows.length) {
    body.append(h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty)));
  }
  return h("div", { class: "table-wrap" }, t);
}

// Team colours come from the API as "#rrggbb" or null; anything else is ignored.
const TEAM_DEFAULT = ["#1873ff", "#c26418"];
export function teamColor(teams, num) {
  const team = (teams || []).find((t) => t.num === num);
  const color = team && team.color_primary;
  if (typeof color === "string" && /^#[0-9a-fA-F]{6}$/.test(color)) return color;
  return TEAM_DEFAULT[num] || "#8892a6";
}

// The score of each team of `nums` (default: the match's teams, in order) in the team's
// colour, with a dash between two: the one way every page shows a score. `attrs(num)`
// gives a page's own attributes for a team's score, `dash` the dash's class.
export function teamScores(match, { nums, dash = "muted", attrs = () => ({}) } = {}) {
  const teams = match.teams || [];
  const order = nums || teams.map((t) => t.num).sort((a, b) => a - b);
  return order.flatMap((num, i) => [
    i ? h("span", { class: dash }, "–") : null,
    h("span", { ...attrs(num), style: { "--team": teamColor(teams, num) } },
      String(teams.find((t) => t.num === num)?.score ?? 0)),
  ]).filter(Boolean);
}

export function teamName(teams, num) {
  const team = (teams || []).find((t) => t.num === num);
  return (team && team.name) || (num === 0 ? "Blue" : num === 1 ? "Orange" : `Team ${num}`);
}

export const KMH_PER_UU = 0.036;

export function fmtClock(seconds, overtime) {
  if (seconds === null || seconds === undefined) return "–:––";
  const s = Math.max(0, Math.round(seconds));
  const text = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  return overtime ? `+${text}` : text;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`;
}

export function fmtNum(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

export function fmtPct(part, whole) {
  if (!whole) return "–";
  return `${Math.round((100 * part) / whole)} %`;
}

// "12:41" today, "Tue 21:05" this week, "3 Nov 21:05" before.
export function fmtWhen(epochSeconds) {
  if (!epochSeconds) return "–";
  const d = new Date(epochSeconds * 1000);
  const now = new Date();
  const time = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === now.toDateString()) return time;
  const days = (now - d) / 86400000;
  if (days < 6) return `${d.toLocaleDateString("en-GB", { weekday: "short" })} ${time}`;
  return `${d.toLocaleDateString("en-GB", { day: "numeric", month: "short" })} ${time}`;
}

export function fmtAgo(epochSeconds) {
  if (!epochSeconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function statTile(label, value, attrs = {}) {
  return h("div", { class: "tile", ...attrs }, h("span", { class: "tile-value" }, value),
    h("span", { class: "tile-label" }, label));
}

// The page says it is ready (tests and screenshots wait for this).
export function ready() {
  document.body.dataset.state = "ready";
  document.querySelector("[data-testid=loading]")?.remove();
}

export function fail(err) {
  const box = document.querySelector("[data-testid=error]");
  box.textContent = err && err.message ? err.message : String(err);
  box.hidden = false;
  document.body.dataset.state = "error";
  document.querySelector("[data-testid=loading]")?.remove();
}

// The last part of the path: /matches/42 -> "42".
export function pathId() {
  return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
}

export function resultBadge(won) {
  if (won === true) return h("span", { class: "badge win" }, "W");
  if (won === false) return h("span", { class: "badge loss" }, "L");
  return h("span", { class: "badge" }, "–");
}

// Replace what `main` shows (null and false children are left out).
export function mount(main, ...children) {
  main.replaceChildren();
  append(main, children);
}
