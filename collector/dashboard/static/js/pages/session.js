// /sessions/{id}: one player's evening: its matches, wins and losses, streak, averages.

import { api } from "../api.js";
import {
  fmtDuration, fmtNum, fmtWhen, h, link, mount, pathId, ready, section, statTile, table,
} from "../dom.js";
import { statValue } from "./match.js";
import { matchLineColumns, streakText } from "./player.js";

const AVERAGES = [
  ["score", "Score"], ["goals", "Goals"], ["assists", "Assists"], ["saves", "Saves"],
  ["shots", "Shots"], ["touches", "Touches"], ["demos", "Demos"],
];
const DERIVED = [
  ["bpm", "BPM"], ["bcpm", "BCPM"], ["boost_avg", "Average boost"],
  ["speed_avg", "Average km/h", "kmh"], ["time_supersonic_s", "Supersonic", "s"],
  ["time_zero_boost_s", "On empty boost", "s"], ["time_air_s", "In the air", "s"],
  ["demos_inflicted", "Demolitions"], ["demos_taken", "Demolished"],
];

export async function render(main) {
  const session = await api(`/v1/sessions/${encodeURIComponent(pathId())}`);
  const name = session.player?.name ?? "?";
  document.title = `${name}'s session · collector`;
  const open = !session.ended_at;
  const summary = h("section", { class: "card", "data-testid": "session-summary" },
    h("h2", {}, "Session"),
    h("div", { class: "tiles" },
      statTile("matches", fmtNum((session.matches || []).length), { "data-field": "matches" }),
      statTile("wins", fmtNum(session.wins), { "data-field": "wins", class: "tile good" }),
      statTile("losses", fmtNum(session.losses), { "data-field": "losses", class: "tile bad" }),
      statTile("streak", streakText(session.streak), { "data-field": "streak" }),
      statTile("goals", fmtNum(session.totals?.goals)),
      statTile("saves", fmtNum(session.totals?.saves)),
      statTile("play seen", fmtDuration(session.stats?.tracked_s))));
  mount(main,
    h("header", { class: "card" },
      h("h1", {}, link(`/players/${session.player?.id}`, name), "'s session"),
      h("p", { class: "muted" },
        `${fmtWhen(session.started_at)} – ${open ? "still playing" : fmtWhen(session.ended_at)}`)),
    summary,
    matchesSection(session.matches || []),
    averages(session));
  ready();
}

function matchesSection(matches) {
  const out = section("Matches", table(matchLineColumns(), matches,
    { rowAttrs: (m) => ({ "data-match-id": m.id }) }));
  out.dataset.testid = "session-matches";
  return out;
}

function averages(session) {
  const avg = session.averages || {};
  const counting = AVERAGES.map(([key, label]) => ({ label, value: fmtNum(avg[key], 1) }));
  const derived = DERIVED.map(([key, label, kind]) => ({ label, value: statValue(session.stats, key, kind) }));
  const columns = (title) => [
    { label: title, cell: (r) => r.label },
    { label: "", num: true, cell: (r) => r.value },
  ];
  const out = section("Averages", h("div", { class: "grid two" },
    table(columns("per match"), counting), table(columns("over the session"), derived)));
  out.dataset.testid = "session-averages";
  return out;
}
