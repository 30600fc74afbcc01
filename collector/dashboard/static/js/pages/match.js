// /matches/{id}: the scoreboard in the teams' colours, the goals on a timeline, and the
// players' boost and movement side by side, blue against orange.

import { api } from "../api.js";
import {
  fmtClock, fmtDuration, fmtNum, fmtWhen, h, link, mount, pathId, ready, section, teamColor, teamName,
  teamScores,
} from "../dom.js";
import { playersBar, shade } from "../charts.js";

const LINE = [
  ["score", "Score", "score"], ["goals", "G", "goals"], ["assists", "A", "assists"],
  ["saves", "Sv", "saves"], ["shots", "Sh", "shots"], ["demos", "D", "demolitions"],
];

export async function render(main) {
  const id = pathId();
  const match = await api(`/v1/matches/${encodeURIComponent(id)}`);
  document.title = `${matchTitle(match)} · collector`;
  const teams = teamNums(match);
  const players = orderPlayers(match.players, teams);
  const colors = playerColors(players, match.teams);
  mount(main, 
    header(match, teams),
    scoreboard(match, teams),
    h("div", { class: "grid two" }, goals(match), possession(match, teams)),
    charts(players, colors),
  );
  drawCharts(players, colors);
  ready();
}

export function matchTitle(match) {
  const [a, b] = (match.teams || []).map((t) => t.score ?? 0);
  return `${match.arena_name || match.arena || "Match"} ${a ?? 0}–${b ?? 0}`;
}

function teamNums(match) {
  const nums = new Set((match.teams || []).map((t) => t.num));
  for (const p of match.players || []) if (p.team !== null && p.team !== undefined) nums.add(p.team);
  if (!nums.size) nums.add(0).add(1);
  return [...nums].filter((n) => n >= 0 && n < 255).sort((x, y) => x - y);
}

function orderPlayers(players, teams) {
  return [...(players || [])].sort((a, b) =>
    teams.indexOf(a.team) - teams.indexOf(b.team) || (b.score ?? 0) - (a.score ?? 0));
}

function playerColors(players, teams) {
  const seen = {};
  const colors = new Map();
  for (const p of players) {
    const index = (seen[p.team] = (seen[p.team] ?? -1) + 1);
    colors.set(p.player_id, shade(teamColor(teams, p.team), index));
  }
  return colors;
}

function header(match, teams) {
  const status = match.ended_at
    ? (match.overtime ? "Final (OT)" : "Final")
    : h("a", { href: "/live", class: "badge live" }, "Live now");
  return h("header", { class: "match-head card" },
    h("div", { class: "match-meta" },
      h("h1", {}, match.arena_name || match.arena || "Match"),
      h("p", { class: "muted" },
        [fmtWhen(match.started_at), match.playlist, `${fmtDuration(match.duration_s)} of play`]
          .filter(Boolean).join(" · "))),
    h("div", { class: "big-score" },
      teamScores(match, {
        nums: teams, dash: "dash",
        attrs: (num) => ({ class: "team-score", "data-testid": "team-score", "data-team": num,
          title: teamName(match.teams, num) }),
      }),
      h("span", { class: "status" }, status)));
}

function scoreboard(match, teams) {
  const wrap = h("section", { class: "scoreboard", "data-testid": "scoreboard" });
  for (const num of teams) {
    const rows = (match.players || []).filter((p) => p.team === num)
      .sort((a, b) => (b.score ?? 0) - (a.score ?? 0));
    const won = match.winner === num;
    const team = (match.teams || []).find((t) => t.num === num);
    wrap.append(h("div", { class: "card team", style: { "--team": teamColor(match.teams, num) } },
      h("h2", {}, h("span", { class: "swatch" }), teamName(match.teams, num),
        won ? h("span", { class: "badge win" }, "Winner") : null,
        h("span", { class: "team-total" }, String(team?.score ?? 0))),
      h("div", { class: "table-wrap" }, h("table", { "data-team": num },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Player"),
          LINE.map(([, label, title]) => h("th", { class: "num", scope: "col", title }, label)),
          h("th", { class: "num", scope: "col", title: "average boost" }, "Boost"),
          h("th", { class: "num", scope: "col", title: "average speed, km/h" }, "km/h"))),
        h("tbody", {}, rows.map((p) => h("tr", { "data-player-id": p.player_id },
          h("td", {}, link(`/players/${p.player_id}`, p.name || "?")),
          LINE.map(([key]) => h("td", { class: "num" }, fmtNum(p[key]))),
          h("td", { class: "num" }, fmtNum(p.stats?.boost_avg)),
          h("td", { class: "num" },
            p.stats?.speed_avg == null ? "–" : fmtNum(p.stats.speed_avg * 0.036)))))))));
  }
  return wrap;
}

// Where a goal sits on the match's timeline, 0-100: by the game clock when the API has
// it (regulation counts down from 5:00, overtime goes at the end), else by arrival.
function goalPosition(match, goal) {
  if (goal.clock !== null && goal.clock !== undefined) {
    if (goal.overtime) return 100;
    const length = Math.max(300, ...(match.goals || []).map((g) => (g.overtime ? 0 : g.clock ?? 0)));
    return Math.min(100, Math.max(0, ((length - goal.clock) / length) * 100));
  }
  const start = match.started_at;
  const end = match.ended_at || match.last_event_at || start;
  return Math.min(100, Math.max(0, ((goal.received_at - start) / Math.max(1, end - start)) * 100));
}

function goals(match) {
  const list = h("ol", { class: "goals", "data-testid": "goals" });
  const track = h("div", { class: "timeline" });
  for (const goal of match.goals || []) {
    const color = teamColor(match.teams, goal.scorer_team);
    const clock = goal.clock === null || goal.clock === undefined
      ? null : fmtClock(goal.clock, goal.overtime);
    track.append(h("span", {
      class: "timeline-goal", style: { left: `${goalPosition(match, goal)}%`, "--team": color },
      title: `${clock ? `${clock} ` : ""}${goal.scorer} · ${fmtNum(goal.speed)} km/h`,
    }));
    list.append(h("li", { "data-testid": "goal", style: { "--team": color } },
      clock ? h("time", { class: "goal-clock", "data-field": "clock" }, clock) : null,
      h("span", { class: "goal-scorer" }, goal.scorer || "?"),
      goal.assister ? h("span", { class: "muted" }, ` assisted by ${goal.assister}`) : null,
      h("span", { class: "goal-speed" }, `${fmtNum(goal.speed)} km/h`)));
  }
  if (!(match.goals || []).length) list.append(h("li", { class: "muted" }, "No goals."));
  return section("Goals", track, list);
}

function possession(match, teams) {
  const total = (match.teams || []).reduce((s, t) => s + (t.possession_s || 0), 0);
  const bar = h("div", { class: "possession", "data-testid": "possession" });
  const legend = h("div", { class: "possession-legend" });
  for (const num of teams) {
    const team = (match.teams || []).find((t) => t.num === num);
    const share = total ? (team?.possession_s || 0) / total : 1 / teams.length;
    bar.append(h("span", {
      "data-team": num, "data-share": share.toFixed(4),
      style: { width: `${share * 100}%`, "--team": teamColor(match.teams, num) },
    }, `${Math.round(share * 100)} %`));
    legend.append(h("span", {}, `${teamName(match.teams, num)}: ${fmtDuration(team?.possession_s)}`));
  }
  return section("Possession", bar, legend,
    h("p", { class: "muted small" }, `${fmtDuration(match.duration_s)} of live play; the team that touched the ball last has it.`),
    teamFacts(match, teams));
}

const FACTS = [["shots", "Shots"], ["saves", "Saves"], ["assists", "Assists"], ["demos", "Demos"]];

function teamFacts(match, teams) {
  const sum = (num, key) => (match.players || []).filter((p) => p.team === num)
    .reduce((s, p) => s + (p[key] || 0), 0);
  return h("div", { class: "table-wrap" }, h("table", { class: "facts" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), teams.map((num) =>
      h("th", { class: "num", style: { color: teamColor(match.teams, num) } }, teamName(match.teams, num))))),
    h("tbody", {}, FACTS.map(([key, label]) => h("tr", {}, h("td", {}, label),
      teams.map((num) => h("td", { class: "num" }, fmtNum(sum(num, key)))))))));
}

// Each chart: [canvas name, title, [stat key, label] ..., unit, transform].
const CHARTS = [
  ["boost", "Boost per minute", [["bpm", "Collected"], ["bcpm", "Used"]], ""],
  ["boost-bands", "Time by boost level", [["time_zero_boost_s", "Empty"], ["time_boost_0_25_s", "0–25"],
    ["time_boost_25_50_s", "25–50"], ["time_boost_50_75_s", "50–75"], ["time_boost_75_100_s", "75–100"],
    ["time_full_boost_s", "Full"]], " s"],
  ["speed", "Speed", [["time_slow_s", "Slow"], ["time_boost_speed_s", "Boost speed"],
    ["time_supersonic_s", "Supersonic"]], " s"],
  ["movement", "Movement", [["time_ground_s", "Ground"], ["time_air_s", "Air"], ["time_wall_s", "Wall"],
    ["time_powerslide_s", "Powerslide"]], " s"],
];

function charts(players, colors) {
  const seen = players.filter((p) => p.stats && p.stats.tracked_s);
  const unseen = players.filter((p) => !(p.stats && p.stats.tracked_s));
  return h("section", { class: "charts" },
    h("div", { class: "grid two" }, CHARTS.map(([name, title]) =>
      h("div", { class: "card chart-card" }, h("h2", {}, title),
        h("div", { class: "chart-box" }, h("canvas", { "data-chart": name, role: "img", "aria-label": title }))))),
    h("div", { class: "card" }, h("h2", {}, "Per player"), statsTable(seen, colors)),
    unseen.length ? h("p", { class: "muted small" },
      `Not seen by the feed (no car data from this seat): ${unseen.map((p) => p.name).join(", ")}.`) : null);
}

const TABLE = [
  ["tracked_s", "Seen", "s"], ["boost_avg", "Avg boost"], ["bpm", "BPM"], ["bcpm", "BCPM"],
  ["time_zero_boost_s", "0 boost", "s"], ["time_full_boost_s", "100 boost", "s"],
  ["speed_avg", "Avg km/h", "kmh"], ["time_supersonic_s", "Supersonic", "s"],
  ["distance", "Distance (km)", "km"], ["time_air_s", "Air", "s"], ["powerslide_count", "Slides"],
  ["demos_inflicted", "Demos"], ["demos_taken", "Demoed"],
];

export function statValue(stats, key, kind) {
  const v = stats?.[key];
  if (v === null || v === undefined) return "–";
  if (kind === "kmh") return fmtNum(v * 0.036);
  if (kind === "km") return fmtNum(v / 100000, 2);
  if (kind === "s") return fmtDuration(v);
  return fmtNum(v, Number.isInteger(v) ? 0 : 1);
}

function statsTable(players, colors) {
  return h("div", { class: "table-wrap" }, h("table", { class: "dense" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Player"),
      TABLE.map(([, label]) => h("th", { class: "num", scope: "col" }, label)))),
    h("tbody", {}, players.map((p) => h("tr", { "data-player-id": p.player_id },
      h("td", {}, h("span", { class: "dot", style: { "--team": colors.get(p.player_id) } }), p.name),
      TABLE.map(([key, , kind]) => h("td", { class: "num" }, statValue(p.stats, key, kind))))))));
}

function drawCharts(players, colors) {
  const seen = players.filter((p) => p.stats && p.stats.tracked_s);
  for (const [name, , keys, unit] of CHARTS) {
    const canvas = document.querySelector(`canvas[data-chart="${name}"]`);
    playersBar(canvas, {
      labels: keys.map(([, label]) => label),
      unit,
      players: seen.map((p) => ({
        name: p.name,
        color: colors.get(p.player_id),
        values: keys.map(([key]) => p.stats[key]),
      })),
    });
  }
}

