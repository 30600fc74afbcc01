// /players/{id}: career figures, a chosen statistic over the player's matches, sessions.

import { api } from "../api.js";
import {
  fmtDuration, fmtNum, fmtPct, fmtWhen, h, link, mount, pathId, ready, resultBadge, section,
  statTile, table,
} from "../dom.js";
import { lineChart } from "../charts.js";
import { statValue } from "./match.js";

// [key, label, where (line | stats), unit factor, unit]
const TRENDS = [
  ["score", "Score", "line"],
  ["goals", "Goals", "line"],
  ["assists", "Assists", "line"],
  ["saves", "Saves", "line"],
  ["shots", "Shots", "line"],
  ["bpm", "Boost collected per minute", "stats"],
  ["bcpm", "Boost used per minute", "stats"],
  ["boost_avg", "Average boost", "stats"],
  ["time_zero_boost_s", "Seconds on empty boost", "stats"],
  ["speed_avg", "Average speed (km/h)", "stats", 0.036],
  ["time_supersonic_s", "Seconds supersonic", "stats"],
  ["time_air_s", "Seconds in the air", "stats"],
  ["demos_inflicted", "Demolitions", "stats"],
];
const HISTORY = 50;

export async function render(main) {
  const id = pathId();
  const [player, history, sessions] = await Promise.all([
    api(`/v1/players/${encodeURIComponent(id)}`),
    api(`/v1/players/${encodeURIComponent(id)}/matches?limit=${HISTORY}`),
    api(`/v1/sessions?player=${encodeURIComponent(id)}&limit=10`),
  ]);
  document.title = `${player.name} · collector`;
  const matches = history.matches;
  const select = h("select", { "data-testid": "trend-stat", "aria-label": "statistic" },
    TRENDS.map(([key, label]) => h("option", { value: key }, label)));
  const canvas = h("canvas", { "data-chart": "trend", role: "img", "aria-label": "trend" });
  mount(main,
    h("header", { class: "card" },
      h("h1", {}, player.name || "?"),
      h("p", { class: "muted" }, player.primary_id || "")),
    career(player),
    h("section", { class: "card" },
      h("div", { class: "row" }, h("h2", {}, "Over the last matches"), select),
      h("div", { class: "chart-box" }, canvas),
      h("p", { class: "muted small" },
        `The ${matches.length} most recent of ${player.matches} matches, oldest on the left; click a point to open the match.`)),
    h("div", { class: "grid two" }, matchesSection(matches), sessionsSection(sessions.sessions)),
  );
  let chart = null;
  const draw = () => {
    chart?.destroy();
    canvas.dataset.drawn = "";
    canvas.dataset.stat = select.value;
    chart = trend(canvas, matches, select.value);
  };
  select.addEventListener("change", draw);
  draw();
  ready();
}

function career(player) {
  const s = player.stats || {};
  const percent = (key) => (s[key] != null && s.tracked_s ? fmtPct(s[key], s.tracked_s) : "–");
  const out = section("Career",
    h("div", { class: "tiles" },
      statTile("matches", fmtNum(player.matches)),
      statTile("wins", `${fmtNum(player.wins)} (${fmtPct(player.wins, player.matches)})`),
      statTile("goals", fmtNum(player.goals)),
      statTile("assists", fmtNum(player.assists)),
      statTile("saves", fmtNum(player.saves)),
      statTile("shots", fmtNum(player.shots)),
      statTile("shooting", fmtPct(player.goals, player.shots)),
      statTile("score / match", player.matches ? fmtNum(player.score / player.matches) : "–"),
      statTile("BPM", statValue(s, "bpm")),
      statTile("avg boost", statValue(s, "boost_avg")),
      statTile("avg km/h", statValue(s, "speed_avg", "kmh")),
      statTile("supersonic", percent("time_supersonic_s")),
      statTile("in the air", percent("time_air_s")),
      statTile("empty boost", percent("time_zero_boost_s")),
      statTile("demos / demoed", `${fmtNum(s.demos_inflicted)} / ${fmtNum(s.demos_taken)}`),
      statTile("play seen", fmtDuration(s.tracked_s))));
  out.dataset.testid = "career";
  return out;
}

function trend(canvas, matches, key) {
  const [, label, where, factor = 1] = TRENDS.find(([k]) => k === key);
  const ordered = [...matches].reverse();
  return lineChart(canvas, {
    label,
    labels: ordered.map((m) => fmtWhen(m.started_at)),
    values: ordered.map((m) => {
      const v = where === "line" ? m[key] : m.stats?.[key];
      return v === null || v === undefined ? null : Math.round(v * factor * 10) / 10;
    }),
    onClick: (index) => { location.href = `/matches/${ordered[index].id}`; },
  });
}

// A player's line in each of their matches: the matches tables of players and sessions.
export function matchLineColumns() {
  return [
    { label: "When", cell: (m) => link(`/matches/${m.id}`, fmtWhen(m.started_at)) },
    { label: "", cell: (m) => resultBadge(m.won) },
    { label: "Arena", cell: (m) => m.arena_name || m.arena || "–" },
    { label: "Score", num: true, cell: (m) => fmtNum(m.score) },
    { label: "G", num: true, title: "goals", cell: (m) => fmtNum(m.goals) },
    { label: "A", num: true, title: "assists", cell: (m) => fmtNum(m.assists) },
    { label: "Sv", num: true, title: "saves", cell: (m) => fmtNum(m.saves) },
    { label: "Sh", num: true, title: "shots", cell: (m) => fmtNum(m.shots) },
    { label: "BPM", num: true, cell: (m) => statValue(m.stats, "bpm") },
    { label: "km/h", num: true, cell: (m) => statValue(m.stats, "speed_avg", "kmh") },
  ];
}

function matchesSection(matches) {
  const out = section("Matches", table(matchLineColumns(), matches.slice(0, 15),
    { rowAttrs: (m) => ({ "data-match-id": m.id }) }));
  out.dataset.testid = "player-matches";
  return out;
}

function sessionsSection(sessions) {
  const out = section("Sessions", table([
    { label: "When", cell: (s) => link(`/sessions/${s.id}`, fmtWhen(s.started_at)) },
    { label: "Matches", num: true, cell: (s) => fmtNum(s.matches) },
    { label: "W–L", num: true, cell: (s) => `${s.wins}–${s.losses}` },
    { label: "Streak", num: true, cell: (s) => streakText(s.streak) },
  ], sessions, { rowAttrs: (s) => ({ "data-session-id": s.id }), empty: "No session yet." }));
  out.dataset.testid = "player-sessions";
  return out;
}

export function streakText(streak) {
  if (!streak) return "–";
  if (typeof streak === "string") return streak;
  return `${streak.result ?? streak.kind ?? ""}${streak.length ?? streak.count ?? ""}`;
}
