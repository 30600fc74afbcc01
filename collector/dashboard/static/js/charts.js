// Charts, drawn by the vendored Chart.js (static/vendor/chart.js), in the dashboard's look.

const { Chart } = window;

Chart.defaults.animation = false; // a Raspberry Pi draws each chart once, at once
Chart.defaults.color = "#aab4c8";
Chart.defaults.borderColor = "rgba(170, 180, 200, 0.14)";
Chart.defaults.font.family = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
Chart.defaults.plugins.legend.labels.boxWidth = 12;
Chart.defaults.maintainAspectRatio = false;

// Tests and screenshots wait for data-drawn="1" on the canvas.
Chart.register({
  id: "drawnMark",
  afterRender(chart) {
    chart.canvas.dataset.drawn = "1";
  },
});

// Blue and orange shades per player: the first player of a team gets its colour, the
// next ones lighter or darker versions of it.
export function shade(hex, index) {
  const n = parseInt(hex.slice(1), 16);
  const rgb = [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  const factor = [0, 0.35, -0.3, 0.6][index % 4];
  const mix = rgb.map((c) => Math.round(factor >= 0 ? c + (255 - c) * factor : c * (1 + factor)));
  return `rgb(${mix.join(", ")})`;
}

// One bar group per statistic, one bar per player (blue players first, then orange).
export function playersBar(canvas, { labels, players, unit = "", horizontal = false }) {
  const chart = new Chart(canvas, {
    type: "bar",
    data: {
      labels,
      datasets: players.map((p) => ({
        label: p.name,
        data: p.values,
        backgroundColor: p.color,
        borderRadius: 3,
        maxBarThickness: 38,
      })),
    },
    options: {
      indexAxis: horizontal ? "y" : "x",
      plugins: {
        tooltip: {
          callbacks: {
            label: (ctx) => `${ctx.dataset.label}: ${format(ctx.raw)}${unit}`,
          },
        },
      },
      scales: {
        [horizontal ? "x" : "y"]: { beginAtZero: true, ticks: { callback: (v) => `${format(v)}${unit}` } },
        [horizontal ? "y" : "x"]: { grid: { display: false } },
      },
    },
  });
  return chart;
}

export function lineChart(canvas, { labels, values, label, color = "#4c9aff", unit = "", onClick }) {
  return new Chart(canvas, {
    type: "line",
    data: {
      labels,
      datasets: [{
        label,
        data: values,
        borderColor: color,
        backgroundColor: `${color}33`,
        fill: true,
        tension: 0,
        pointRadius: 3,
        spanGaps: true,
      }],
    },
    options: {
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (ctx) => `${label}: ${format(ctx.raw)}${unit}` } },
      },
      scales: { y: { beginAtZero: true }, x: { grid: { display: false } } },
      onClick: onClick ? (_event, elements) => elements.length && onClick(elements[0].index) : undefined,
    },
  });
}

function format(value) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 100 ? Math.round(value).toLocaleString("en-US") : Math.round(value * 10) / 10;
}
