// The dashboard's only script: draws the throughput chart, refreshes the
// overview's counts, and asks before destructive forms are sent. It reads
// JSON from /api and writes text only (textContent), never HTML.
(function () {
  "use strict";

  function ageText(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  // -- throughput chart -----------------------------------------------------
  var chartBox = document.getElementById("throughput");
  var plot = null;

  function chartData(data) {
    var xs = data.minutes.map(function (m) { return Date.parse(m) / 1000; });
    return [xs, data.done, data.error];
  }

  function drawChart() {
    if (!chartBox || typeof uPlot === "undefined") return;
    getJSON("/api/throughput?hours=" + encodeURIComponent(chartBox.dataset.hours || "3")).then(function (data) {
      var rows = chartData(data);
      if (plot) { plot.setData(rows); return; }
      chartBox.textContent = "";
      plot = new uPlot({
        width: Math.max(300, chartBox.clientWidth - 16),
        height: 240,
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
        scales: { y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } },
        series: [
          {},
          { label: "done / min", stroke: "#16a34a", fill: "rgba(22,163,74,0.12)", width: 1.5 },
          { label: "error / min", stroke: "#dc2626", fill: "rgba(220,38,38,0.12)", width: 1.5 }
        ],
        axes: [{}, { size: 50 }]
      }, rows, chartBox);
      chartBox.dataset.ready = "1";
    }).catch(function (err) { chartBox.textContent = "Chart unavailable: " + err.message; });
  }

  // -- live counts ------------------------------------------------------------
  function refreshCounts() {
    getJSON("/api/overview").then(function (data) {
      Object.keys(data.counts).forEach(function (status) {
        var el = document.querySelector('[data-count="' + status + '"]');
        if (el) el.textContent = String(data.counts[status]);
      });
      var age = document.getElementById("oldest-due");
      if (age) age.textContent = ageText(data.oldest_due_age);
    }).catch(function () { /* keep the last numbers; the next refresh tries again */ });
  }

  if (chartBox) {
    drawChart();
    setInterval(drawChart, 60000);
    var counts = document.getElementById("counts");
    setInterval(refreshCounts, Number((counts && counts.dataset.refreshMs) || 10000));
    window.addEventListener("resize", function () {
      if (plot) plot.setSize({ width: Math.max(300, chartBox.clientWidth - 16), height: 240 });
    });
  }

  // -- confirmations ------------------------------------------------------------
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
