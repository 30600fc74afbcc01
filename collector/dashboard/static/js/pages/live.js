// /live: the current match as it is played, following GET /v1/live; ?overlay=1 is the
// compact, transparent variant for an OBS browser source.

import { stream } from "../api.js";
import {
  fmtClock, fmtNum, h, KMH_PER_UU, mount, ready, teamColor, teamName, teamScores,
} from "../dom.js";

const EVENTS_KEPT = 12;
// Scoreboard counters whose increase is shown as an event.
const WATCHED = [["goals", "Goal"], ["assists", "Assist"], ["saves", "Save"], ["shots", "Shot"],
  ["demos", "Demolition"]];
const RECONNECT_MS = 2000;

export async function render(main) {
  const overlay = new URLSearchParams(location.search).get("overlay");
  if (overlay && overlay !== "0") document.body.classList.add("overlay");
  const view = new LiveView(main);
  follow(view);
}

async function follow(view) {
  for (;;) {
    try {
      await stream("/v1/live", (name, data) => {
        if (name === "idle") view.idle();
        else if (name === "match") view.show(data);
        ready();
      });
      view.status("reconnecting…", false);
    } catch (err) {
      view.status(`no feed: ${err.message}; trying again`, false);
      ready();
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

class LiveView {
  constructor(main) {
    this.scores = h("div", { class: "live-score", "data-testid": "live-score" });
    this.clock = h("div", { class: "live-clock", "data-testid": "live-clock" }, "–:––");
    this.state = h("div", { class: "live-status", "data-testid": "live-status" }, "connecting…");
    this.arena = h("div", { class: "muted live-hint" });
    this.teams = h("div", { class: "live-teams" });
    this.events = h("ol", { class: "live-events", "data-testid": "live-events" },
      h("li", { class: "muted empty" }, "Goals, shots, saves and demolitions appear here."));
    this.matchId = null;
    this.previous = new Map();
    this.players = new Map();
    mount(main,
      h("section", { class: "live-top" }, this.scores,
        h("div", {}, this.clock, this.state, this.arena)),
      this.teams,
      h("section", { class: "card", "data-testid": "live-events-card" },
        h("h2", {}, "Events"), this.events));
  }

  status(text, on) {
    this.state.textContent = text;
    this.state.classList.toggle("on", on);
  }

  idle() {
    this.status("waiting for a match", false);
  }

  show(match) {
    if (match.id !== this.matchId) this.reset(match);
    this.scores.replaceChildren(...teamScores(match, {
      attrs: (num) => ({ "data-team": num, title: teamName(match.teams, num) }),
    }));
    this.clock.textContent = fmtClock(match.time_seconds, match.overtime);
    this.arena.textContent = match.arena_name || match.arena || "";
    if (match.ended_at) {
      const winner = match.winner === null || match.winner === undefined
        ? "" : ` · ${teamName(match.teams, match.winner)} won`;
      this.status(`ended${winner}`, false);
    } else {
      this.status("live", true);
    }
    for (const p of match.players || []) this.player(match, p);
    for (const goal of (match.goals || []).slice(this.goalsSeen)) this.goal(match, goal);
    this.goalsSeen = (match.goals || []).length;
  }

  reset(match) {
    this.matchId = match.id;
    this.previous.clear();
    this.players.clear();
    this.teams.replaceChildren();
    this.events.replaceChildren();
    this.goalsSeen = (match.goals || []).length; // goals before we joined are no news
    this.first = true;
  }

  column(match, team) {
    let col = this.teams.querySelector(`[data-team-col="${team}"]`);
    if (!col) {
      col = h("div", { class: "live-team", "data-team-col": team });
      const after = [...this.teams.children].find((c) => Number(c.dataset.teamCol) > team);
      this.teams.insertBefore(col, after || null);
    }
    return col;
  }

  player(match, p) {
    let entry = this.players.get(p.player_id);
    if (!entry) {
      const fields = {
        name: h("div", { class: "pname", "data-field": "name" }, p.name || "?"),
        boost: h("span", { class: "fig boost", "data-field": "boost" }, "–"),
        speed: h("span", { class: "fig speed", "data-field": "speed" }, "–"),
        bar: h("span", {}),
        line: h("div", { class: "line" }),
      };
      const card = h("div", {
        class: "live-player", "data-testid": "live-player", "data-player-id": p.player_id,
        "data-team": p.team ?? "", style: { "--team": teamColor(match.teams, p.team) },
      },
      fields.name,
      h("div", {}, fields.boost, h("span", { class: "unit" }, "boost")),
      h("div", {}, fields.speed, h("span", { class: "unit" }, "km/h")),
      h("div", { class: "boost-bar" }, fields.bar),
      fields.line);
      entry = { card, fields };
      this.players.set(p.player_id, entry);
      this.column(match, p.team ?? 255).append(card);
    }
    const { card, fields } = entry;
    const car = p.car;
    if (car && !car.demolished) {
      fields.boost.textContent = String(Math.round(car.boost));
      fields.speed.textContent = fmtNum(car.speed * KMH_PER_UU);
      fields.bar.style.width = `${Math.max(0, Math.min(100, car.boost))}%`;
    } else {
      fields.boost.textContent = "–";
      fields.speed.textContent = car && car.demolished ? "demo" : "–";
      fields.bar.style.width = "0%";
    }
    card.classList.toggle("demolished", Boolean(car && car.demolished));
    card.classList.toggle("supersonic", Boolean(car && car.supersonic));
    fields.line.textContent =
      `${fmtNum(p.score)} pts · ${fmtNum(p.goals)} G · ${fmtNum(p.assists)} A · ${fmtNum(p.saves)} Sv · ${fmtNum(p.shots)} Sh`;
    const before = this.previous.get(p.player_id);
    if (before) {
      for (const [key, label] of WATCHED) {
        if (key === "goals" || key === "assists") continue; // goals come with their details
        if ((p[key] ?? 0) > (before[key] ?? 0)) this.event(match, p.team, `${label}: ${p.name}`);
      }
    }
    this.previous.set(p.player_id, { ...p });
  }

  goal(match, goal) {
    const assist = goal.assister ? ` (assist ${goal.assister})` : "";
    this.event(match, goal.scorer_team,
      `GOAL ${goal.scorer}${assist} · ${fmtNum(goal.speed)} km/h`);
  }

  event(match, team, text) {
    this.events.querySelector(".empty")?.remove();
    const item = h("li", { style: { "--team": teamColor(match.teams, team) } },
      h("time", {}, fmtClock(match.time_seconds, match.overtime)), text);
    this.events.prepend(item);
    while (this.events.children.length > EVENTS_KEPT) this.events.lastChild.remove();
  }
}
