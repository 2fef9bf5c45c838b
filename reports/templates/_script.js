(function () {
  "use strict";
  // Paginate every table.paged: a long evidence or event table stays quick to render and to read.
  function paginate(table) {
    var size = parseInt(table.dataset.pageSize || "25", 10);
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    if (rows.length <= size) return;
    var pages = Math.ceil(rows.length / size), page = 0;
    var nav = document.createElement("div");
    nav.className = "pager";
    var prev = document.createElement("button"), next = document.createElement("button");
    var label = document.createElement("span");
    prev.textContent = "\u2039 prev"; next.textContent = "next \u203a";
    prev.type = next.type = "button";
    nav.appendChild(prev); nav.appendChild(label); nav.appendChild(next);
    table.parentNode.insertBefore(nav, table.nextSibling);
    function show() {
      rows.forEach(function (r, i) { r.hidden = Math.floor(i / size) !== page; });
      label.textContent = "page " + (page + 1) + " / " + pages + " (" + rows.length + " rows)";
      prev.disabled = page === 0; next.disabled = page === pages - 1;
    }
    prev.addEventListener("click", function () { if (page > 0) { page--; show(); } });
    next.addEventListener("click", function () { if (page < pages - 1) { page++; show(); } });
    show();
  }
  document.querySelectorAll("table.paged").forEach(paginate);

  var figures = JSON.parse(document.getElementById("figures").textContent || "{}");
  var divs = document.querySelectorAll("[data-figure]");
  if (typeof Plotly === "undefined") {
    divs.forEach(function (d) { d.textContent = "Plots unavailable: plotly.min.js is missing beside this page."; });
    window.reportReady = Promise.resolve(false);
    if (divs.length) console.error("plotly.min.js did not load; plots cannot render");
    return;
  }
  var drawn = [];
  divs.forEach(function (div) {
    var fig = figures[div.dataset.figure];
    if (!fig) { div.textContent = "no data"; return; }
    drawn.push(Plotly.newPlot(div, fig.data, fig.layout, { responsive: true, displaylogo: false }));
  });
  window.reportReady = Promise.all(drawn).then(function () {
    document.body.dataset.plots = "ready";
    return true;
  });
})();
