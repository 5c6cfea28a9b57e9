// ordo dashboard: live refresh of the overview and its sparklines. Every page works without this script.
// The API reports current counts only, so trends come from the readings taken during this visit: depth is the
// `data-depth` of each row, throughput and failures are the rise of `data-done` / `data-failed` per second.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var KEEP = 60;
  // Throughput and failures are averaged over this long (the API counts finished jobs every 10 s).
  var WINDOW = 20000;
  var history = {};

  function spark(values, label) {
    var w = 80, h = 24, max = Math.max.apply(null, values.concat([1]));
    var step = values.length > 1 ? w / (values.length - 1) : w;
    var points = values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1);
    }).join(" ");
    var last = values.length ? values[values.length - 1] : 0;
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("role", "img");
    var title = document.createElementNS(ns, "title");
    title.textContent = label + ": latest " + (Math.round(last * 10) / 10) + ", peak " + (Math.round(max * 10) / 10);
    svg.appendChild(title);
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points);
    // Colours come from the stylesheet (light or dark).
    line.setAttribute("class", label.indexOf("Failed") === 0 ? "line series-3" : "line series-1");
    svg.appendChild(line);
    return svg;
  }

  function record(tbody) {
    var now = Date.now();
    Array.prototype.forEach.call(tbody.querySelectorAll("tr[data-key]"), function (tr) {
      var key = tr.getAttribute("data-key");
      var h = history[key] || (history[key] = []);
      h.push({ t: now, depth: +tr.getAttribute("data-depth") || 0,
        done: +tr.getAttribute("data-done") || 0, failed: +tr.getAttribute("data-failed") || 0 });
      if (h.length > KEEP + 1) { h.shift(); }
      var series = { depth: h.map(function (r) { return r.depth; }), done: [], failed: [] };
      for (var i = 1; i < h.length; i++) {
        // The API refreshes finished counts every 10 s: a rate over the last WINDOW ms (at least two samples)
        // spreads each step over the time it took instead of drawing a spike every 10 s.
        var j = i - 1;
        while (j > 0 && h[i].t - h[j - 1].t <= WINDOW) { j--; }
        var dt = Math.max((h[i].t - h[j].t) / 1000, 0.001);
        // Finished jobs are pruned after the retention window, so a count may fall: never a negative rate.
        series.done.push(Math.max(h[i].done - h[j].done, 0) / dt);
        series.failed.push(Math.max(h[i].failed - h[j].failed, 0) / dt);
      }
      var labels = { depth: "Depth", done: "Completed per second", failed: "Failed per second" };
      Array.prototype.forEach.call(tr.querySelectorAll("td.spark"), function (td) {
        var name = td.getAttribute("data-series");
        if (!tr.hasAttribute("data-done") && name !== "depth") { return; }
        var values = series[name] || [];
        if (values.length < 2 && name === "depth") { values = values.concat(values); }
        if (values.length < 2) { return; }
        td.textContent = "";
        td.appendChild(spark(values, labels[name] + " of " + key));
      });
    });
  }

  function start() {
    var tbody = document.getElementById("live");
    if (!tbody || !window.fetch) { return; }
    var status = document.getElementById("live-status");
    record(tbody);
    // Polls one at a time, and waits at least four times as long as the last answer took, so an open dashboard
    // keeps the server busy at most a fifth of the time however slow the counts of a large account are.
    function poll() {
      if (document.hidden) { setTimeout(poll, POLL_MS); return; }
      var started = Date.now();
      fetch(tbody.getAttribute("data-src"), { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (res) {
          // A redirect means the session ended: show the sign-in page.
          if (res.redirected || res.status === 401) { window.location.reload(); return null; }
          if (!res.ok) { throw new Error("HTTP " + res.status); }
          return res.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          tbody.innerHTML = html;
          record(tbody);
          if (status) { status.textContent = "Live: updated " + new Date().toLocaleTimeString() + "."; }
        })
        .catch(function (e) {
          if (status) { status.textContent = "Live refresh failed (" + e.message + "); retrying."; }
        })
        .then(function () { setTimeout(poll, Math.max(POLL_MS, 4 * (Date.now() - started))); });
    }
    setTimeout(poll, POLL_MS);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
