/* Reports page: draws each chart with Chart.js (installed by npm, served from /vendor).
 * A canvas carries its configuration in data-chart (labels already translated by the
 * server); there are no inline scripts (CSP). The tables next to the charts hold every
 * figure, so a missing chart library costs only the pictures. */
(function () {
  "use strict";
  var COLORS = {
    blue: "#1f5fbf", sky: "#84adff", green: "#12b76a", red: "#f04438", amber: "#f79009",
    grey: "#98a2b3", purple: "#7a5af8", teal: "#15b79e"
  };

  function say(figure, key) {
    var msg = figure.querySelector(".chart-msg");
    msg.textContent = msg.dataset[key];
    msg.hidden = false;
    figure.querySelector(".chart-canvas").hidden = true;
  }

  function withUnit(unit) {
    return function (value) { return unit ? value + (unit === "%" ? "%" : " " + unit) : value; };
  }

  function config(spec) {
    if (spec.type === "doughnut") {
      return {
        type: "doughnut",
        data: {
          labels: spec.labels,
          datasets: spec.datasets.map(function (d) {
            return { data: d.data, backgroundColor: d.colors.map(function (c) { return COLORS[c]; }),
                     borderColor: "#fff", borderWidth: 2 };
          })
        },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false, cutout: "58%",
          plugins: { legend: { position: "right", labels: { boxWidth: 12, padding: 12 } } }
        }
      };
    }
    var value = spec.horizontal ? "x" : "y";
    var category = spec.horizontal ? "y" : "x";
    var scales = {};
    scales[category] = { stacked: !!spec.stacked, grid: { display: false } };
    scales[value] = { stacked: !!spec.stacked, beginAtZero: true, grid: { color: "#eef0f3" },
                      ticks: { callback: withUnit(spec.unit), precision: spec.max === 5 ? 1 : 0 } };
    if (spec.max) { scales[value].max = spec.max; }
    return {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map(function (d) {
          return { label: d.label, data: d.data, backgroundColor: COLORS[d.color], borderRadius: 3,
                   maxBarThickness: 34 };
        })
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, indexAxis: category,
        scales: scales,
        plugins: {
          legend: { display: spec.datasets.length > 1, position: "bottom", labels: { boxWidth: 12, padding: 12 } },
          tooltip: { callbacks: { label: function (ctx) {
            var v = ctx.parsed[value];
            return (ctx.dataset.label ? ctx.dataset.label + ": " : "") + (v === null ? "—" : withUnit(spec.unit)(v));
          } } }
        }
      }
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var canvases = document.querySelectorAll("canvas[data-chart]");
    if (!canvases.length) { return; }
    if (typeof window.Chart === "function") {
      window.Chart.defaults.font.family = window.getComputedStyle(document.body).fontFamily;
      window.Chart.defaults.font.size = 12;
      window.Chart.defaults.color = "#475467";
    }
    canvases.forEach(function (canvas) {
      var figure = canvas.closest(".chart-box");
      var spec = JSON.parse(canvas.dataset.chart);
      if (spec.empty) { say(figure, "empty"); return; }
      if (typeof window.Chart !== "function") { say(figure, "missing"); return; }
      new window.Chart(canvas, config(spec));
      canvas.dataset.rendered = "true";
    });
  });
}());
