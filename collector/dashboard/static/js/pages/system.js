// /system: the queue's health for the operator: depth, rate, the worker, dead letters
// (retry or drop, each after a confirmation), and what /metrics counts, every 2 s.

import { api } from "../api.js";
import { fmtAgo, fmtDuration, fmtNum, h, mount, ready, section, statTile, table } from "../dom.js";
import { lineChart } from "../charts.js";

const REFRESH_MS = 2000;
const DEAD_PAGE = 50;
const HISTORY = 60; // readings on the chart (2 minutes)

export async function render(main) {
  const view = new SystemView(main);
  await view.refresh();
  ready();
  setInterval(() => view.refresh().catch((err) => view.problem(err)), REFRESH_MS);
}

// Prometheus text exposition -> {name: value} (labels summed), enough for the figures here.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (!Number.isNaN(value)) out[match[1]] = (out[match[1]] || 0) + value;
  }
  return out;
}

class SystemView {
  constructor(main) {
    this.health = h("div", { class: "health", "data-testid": "health" });
    this.tiles = h("div", { class: "tiles", "data-testid": "queue" });
    this.metrics = h("div", { class: "tiles", "data-testid": "metrics" });
    this.warnings = h("ul", { class: "bad", "data-testid": "warnings" });
    this.dead = h("div", { "data-testid": "dead-letters" });
    this.deadTotal = h("span", { class: "muted" });
    this.message = h("p", { class: "muted small", role: "status" });
    this.canvas = h("canvas", { "data-chart": "rate", role: "img", "aria-label": "jobs per second" });
    this.offset = 0;
    this.readings = [];
    this.chart = null;
    mount(main,
      h("section", { class: "card" }, h("div", { class: "row" }, h("h1", {}, "System"), this.health),
        this.warnings, this.tiles),
      h("div", { class: "grid two" },
        h("section", { class: "card" }, h("h2", {}, "Jobs applied per second"),
          h("div", { class: "chart-box" }, this.canvas)),
        section("Process", this.metrics)),
      h("section", { class: "card" },
        h("div", { class: "row" }, h("h2", {}, "Dead letters"), this.deadTotal,
          h("button", { type: "button", "data-action": "retry-all", onclick: () => this.act("retry-all") }, "Retry all"),
          h("button", { type: "button", class: "danger", "data-action": "drop-all", onclick: () => this.act("drop-all") }, "Drop all")),
        this.message, this.dead));
  }

  problem(err) {
    this.message.textContent = `Could not refresh: ${err.message}`;
  }

  async refresh() {
    const [queue, metricsText, dead] = await Promise.all([
      api("/v1/queue"),
      fetch("/metrics", { headers: { Accept: "text/plain" } }).then((r) => r.text()),
      api(`/v1/dead?limit=${DEAD_PAGE}&offset=${this.offset}`),
    ]);
    const m = parseMetrics(metricsText);
    const now = Date.now() / 1000;
    this.readings.push({ t: now, processed: queue.processed_total, pending: queue.pending });
    if (this.readings.length > HISTORY + 1) this.readings.shift();
    const rate = this.rate();
    const running = m.collector_worker_running === 1;
    mount(this.health,
      h("span", { class: "dot", style: { "--team": running ? "#38c172" : "#ef5f5f" } }),
      h("span", {}, running ? "worker running" : "worker stopped"),
      m.collector_worker_busy_seconds > 5
        ? h("span", { class: "bad" }, ` · one job for ${fmtDuration(m.collector_worker_busy_seconds)}`)
        : null);
    mount(this.warnings, (queue.warnings || []).map((w) =>
      h("li", {}, typeof w === "string" ? w : `${w.code || ""} ${w.detail || JSON.stringify(w)}`)));
    this.tiles.replaceChildren(
      statTile("worker", running ? "running" : "stopped",
        { "data-field": "worker", class: running ? "tile good" : "tile bad" }),
      statTile("pending", fmtNum(queue.pending), { "data-field": "pending" }),
      statTile("in flight", fmtNum(queue.in_flight), { "data-field": "in-flight" }),
      statTile("jobs/s", rate === null ? "–" : fmtNum(rate, rate < 10 ? 1 : 0), { "data-field": "rate" }),
      statTile("processed, ever", fmtNum(queue.processed_total), { "data-field": "processed" }),
      statTile("dead letters", fmtNum(queue.dead),
        { "data-field": "dead", class: queue.dead ? "tile bad" : "tile" }),
      statTile("oldest waiting", queue.oldest_pending_age_s == null ? "–"
        : fmtDuration(queue.oldest_pending_age_s), { "data-field": "oldest" }),
      statTile("last seq", fmtNum(queue.last_seq)));
    const commits = m.collector_queue_commit_batch_requests_count || 0;
    this.metrics.replaceChildren(
      statTile("up", m.process_start_time_seconds
        ? fmtDuration(now - m.process_start_time_seconds) : "–"),
      statTile("memory", m.process_resident_memory_bytes
        ? `${fmtNum(m.process_resident_memory_bytes / 1048576)} MiB` : "–"),
      statTile("accepted since start", fmtNum(m.collector_events_accepted_total)),
      statTile("requests refused", fmtNum(m.collector_requests_rejected_total || 0)),
      statTile("events / commit", commits
        ? fmtNum(m.collector_queue_commit_batch_events_sum / commits, 1) : "–"),
      statTile("commit ms (avg)", commits
        ? fmtNum((1000 * m.collector_queue_commit_duration_seconds_sum) / commits, 1) : "–"),
      statTile("handler errors", fmtNum(m.collector_handler_errors_total || 0)),
      statTile("retried", fmtNum(m.collector_jobs_retried_total)),
      statTile("live viewers", fmtNum(m.collector_live_clients)));
    this.showDead(dead);
    this.drawRate();
    this.message.textContent = "";
  }

  rate() {
    const r = this.readings;
    if (r.length < 2) return null;
    const [a, b] = [r[r.length - 2], r[r.length - 1]];
    return Math.max(0, (b.processed - a.processed) / Math.max(0.001, b.t - a.t));
  }

  drawRate() {
    const r = this.readings;
    const labels = [];
    const values = [];
    for (let i = 1; i < r.length; i += 1) {
      labels.push(new Date(r[i].t * 1000).toLocaleTimeString("en-GB"));
      values.push(Math.round(((r[i].processed - r[i - 1].processed) / Math.max(0.001, r[i].t - r[i - 1].t)) * 10) / 10);
    }
    if (!this.chart) {
      this.chart = lineChart(this.canvas, { labels, values, label: "jobs/s" });
    } else {
      this.chart.data.labels = labels;
      this.chart.data.datasets[0].data = values;
      this.chart.update("none");
    }
  }

  showDead(page) {
    this.deadTotal.textContent = `${fmtNum(page.total)} in all`;
    const rows = page.dead || [];
    const wrap = table([
      { label: "Seq", num: true, cell: (d) => String(d.seq) },
      { label: "Failed", cell: (d) => fmtAgo(d.failed_at) },
      { label: "Tries", num: true, cell: (d) => fmtNum(d.attempts) },
      { label: "Error", cell: (d) => h("pre", { class: "detail" }, d.error || "") },
      { label: "Event", cell: (d) => h("pre", { class: "detail" }, preview(d.payload)) },
      {
        label: "", cell: (d) => h("div", { class: "row" },
          h("button", { type: "button", "data-action": "retry", onclick: () => this.act("retry", d.seq) }, "Retry"),
          h("button", { type: "button", class: "danger", "data-action": "drop", onclick: () => this.act("drop", d.seq) }, "Drop")),
      },
    ], rows, { rowAttrs: (d) => ({ "data-seq": d.seq }), empty: "No dead letter: every job went through." });
    const pager = h("div", { class: "row more" });
    if (this.offset > 0) {
      pager.append(h("button", { type: "button", onclick: () => this.page(-DEAD_PAGE) }, "Previous"));
    }
    if (this.offset + rows.length < page.total) {
      pager.append(h("button", { type: "button", onclick: () => this.page(DEAD_PAGE) }, "Next"));
    }
    this.dead.replaceChildren(wrap, pager);
  }

  async page(delta) {
    this.offset = Math.max(0, this.offset + delta);
    await this.refresh();
  }

  async act(action, seq) {
    const questions = {
      retry: `Put dead letter ${seq} back in the queue, at its old place?`,
      drop: `Delete dead letter ${seq} for good? Its event is lost.`,
      "retry-all": "Put every dead letter back in the queue?",
      "drop-all": "Delete every dead letter for good? Their events are lost.",
    };
    if (!window.confirm(questions[action])) return;
    const calls = {
      retry: () => api(`/v1/dead/${seq}/retry`, { method: "POST" }),
      drop: () => api(`/v1/dead/${seq}`, { method: "DELETE" }),
      "retry-all": () => api("/v1/dead/retry", { method: "POST", body: { all: true } }),
      "drop-all": () => api("/v1/dead/drop", { method: "POST", body: { all: true } }),
    };
    try {
      const answer = await calls[action]();
      this.offset = 0;
      await this.refresh();
      this.message.textContent = action.startsWith("retry")
        ? `Retried ${answer.retried}.` : `Dropped ${answer.dropped}.`;
    } catch (err) {
      this.message.textContent = `${action} failed: ${err.message}`;
    }
  }
}

function preview(payload) {
  const text = typeof payload === "string" ? payload : JSON.stringify(payload);
  return text.length > 160 ? `${text.slice(0, 160)}…` : text;
}
