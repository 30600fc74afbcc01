// /: the live match when one is being played, recent matches, sessions and players.

import { api } from "../api.js";
import {
  fmtDuration, fmtNum, fmtWhen, h, link, mount, ready, section, table, teamScores,
} from "../dom.js";

export async function render(main) {
  const [matches, sessions, players] = await Promise.all([
    api("/v1/matches?limit=15"),
    api("/v1/sessions?limit=8"),
    api("/v1/players?limit=12"),
  ]);
  const live = matches.matches.find((m) => !m.ended_at);
  mount(main, 
    live ? liveCard(live) : null,
    matchesSection(matches),
    h("div", { class: "grid two" }, sessionsSection(sessions.sessions), playersSection(players.players)),
  );
  ready();
}

export function scoreline(match) {
  if (!(match.teams || []).length) return h("span", { class: "muted" }, "–");
  return h("span", { class: "scoreline" }, teamScores(match, {
    attrs: (num) => ({ class: `s${match.winner === num ? " winner" : ""}` }),
  }));
}

function liveCard(match) {
  return h("a", { href: "/live", class: "card live-card", "data-testid": "live-card" },
    h("span", { class: "badge live" }, "LIVE"),
    h("strong", {}, match.arena_name || match.arena || "Match"),
    scoreline(match),
    h("span", { class: "muted" }, `${fmtDuration(match.duration_s)} of play · follow it live →`));
}

function matchColumns() {
  return [
    { label: "When", cell: (m) => link(`/matches/${m.id}`, fmtWhen(m.started_at)) },
    { label: "Arena", cell: (m) => m.arena_name || m.arena || "–" },
    { label: "Score", cell: (m) => scoreline(m) },
    { label: "Play", num: true, title: "live play", cell: (m) => fmtDuration(m.duration_s) },
    {
      label: "", cell: (m) => (!m.ended_at ? h("span", { class: "badge live" }, "live")
        : m.overtime ? h("span", { class: "badge" }, "OT") : ""),
    },
  ];
}

function matchesSection(page) {
  const columns = matchColumns();
  const wrap = table(columns, page.matches, {
    rowAttrs: (m) => ({ "data-match-id": m.id }),
    empty: "No match yet. Point the bridge or a plugin at this server and play one.",
  });
  const body = wrap.querySelector("tbody");
  const out = section("Recent matches", wrap);
  out.dataset.testid = "recent-matches";
  let next = page.next;
  if (next) {
    const more = h("button", { type: "button", class: "more", "data-testid": "more-matches" }, "Older matches");
    more.addEventListener("click", async () => {
      more.disabled = true;
      const older = await api(`/v1/matches?limit=15&before=${encodeURIComponent(next)}`);
      for (const m of older.matches) {
        body.append(h("tr", { "data-match-id": m.id }, columns.map((c) =>
          h("td", { class: c.num ? "num" : null }, c.cell(m)))));
      }
      next = older.next;
      more.disabled = false;
      if (!next) more.remove();
    });
    out.append(more);
  }
  return out;
}

function sessionsSection(sessions) {
  const out = section("Sessions", table([
    { label: "Player", cell: (s) => link(`/sessions/${s.id}`, s.player?.name ?? s.player_name ?? "?") },
    { label: "When", cell: (s) => fmtWhen(s.started_at) },
    { label: "Matches", num: true, cell: (s) => fmtNum(s.matches) },
    { label: "W–L", num: true, cell: (s) => h("span", {}, h("span", { class: "win-text" }, String(s.wins)), "–", String(s.losses)) },
  ], sessions, { rowAttrs: (s) => ({ "data-session-id": s.id }), empty: "No session yet." }));
  out.dataset.testid = "recent-sessions";
  return out;
}

function playersSection(players) {
  const out = section("Players", table([
    { label: "Player", cell: (p) => link(`/players/${p.id}`, p.name || "?") },
    { label: "Matches", num: true, cell: (p) => fmtNum(p.matches) },
    { label: "Wins", num: true, cell: (p) => fmtNum(p.wins) },
    { label: "Goals", num: true, cell: (p) => fmtNum(p.goals) },
    { label: "BPM", num: true, title: "boost collected per minute", cell: (p) => fmtNum(p.stats?.bpm) },
    { label: "km/h", num: true, title: "average speed", cell: (p) => p.stats?.speed_avg == null ? "–" : fmtNum(p.stats.speed_avg * 0.036) },
  ], players, { rowAttrs: (p) => ({ "data-player-id": p.id }), empty: "No player yet." }));
  out.dataset.testid = "players";
  return out;
}
