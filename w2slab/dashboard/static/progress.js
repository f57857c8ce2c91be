/* PGR over time as small multiples: one Plotly panel per researcher (4 per row, one shared y
   scale), dev evaluations (operator view only), board scores and sealed scores with their
   intervals. The select shows one researcher's panel at full width. Data: #progress-data. */
(function () {
  "use strict";
  var el = document.getElementById("pgr-chart");
  var src = document.getElementById("progress-data");
  var who = document.getElementById("progress-who");
  if (!el || !src || !window.Plotly) return;
  var data = JSON.parse(src.textContent);
  function setData(d) {  /* replace the data and redraw (the select lists the new names) */
    data = d;
    if (who) {
      who.innerHTML = "<option value=\"\">all</option>";
      d.researchers.forEach(function (r) { var o = document.createElement("option"); o.textContent = r.name; who.appendChild(o); });
    }
    draw();
  }
  var STYLE = {
    dev: {name: "dev evaluation", mode: "markers", marker: {color: "#9aa3b2", size: 5}},
    board: {name: "board", mode: "markers", marker: {color: "#2f6fbd", size: 7}},
    sealed: {name: "sealed", mode: "markers", marker: {color: "#c0392b", size: 10, symbol: "diamond"}}
  };
  function bars(part) {
    if (!part.lo.some(function (v) { return v !== null; })) return undefined;
    return {type: "data", symmetric: false, thickness: 1.2, width: 3,
            array: part.y.map(function (y, i) { return part.hi[i] === null ? 0 : part.hi[i] - y; }),
            arrayminus: part.y.map(function (y, i) { return part.lo[i] === null ? 0 : y - part.lo[i]; })};
  }
  function draw() {
    var chosen = who && who.value ? data.researchers.filter(function (r) { return r.name === who.value; }) : data.researchers;
    var n = chosen.length, cols = Math.max(1, Math.min(4, n)), rows = Math.max(1, Math.ceil(n / cols));
    var traces = [], seen = {}, annotations = [];
    var height = n === 1 ? 380 : 70 + rows * 190;
    var layout = {height: height, margin: {t: 55, r: 10, b: 40, l: 45}, showlegend: true,
                  legend: {orientation: "h", x: 0, y: 1 + 30 / (height - 95), yanchor: "bottom"}, hovermode: "closest",
                  grid: {rows: rows, columns: cols, pattern: "independent", ygap: 0.45, xgap: 0.12}};
    chosen.forEach(function (r, i) {
      var ax = i === 0 ? "" : String(i + 1);
      ["dev", "board", "sealed"].forEach(function (part) {
        var p = r[part];
        if (!p.x.length) return;
        var s = STYLE[part];
        traces.push({type: "scatter", mode: s.mode, marker: s.marker, name: s.name, legendgroup: part, showlegend: !seen[part],
                     x: p.x, y: p.y, error_y: bars(p), xaxis: "x" + ax, yaxis: "y" + ax,
                     customdata: p.id, hovertemplate: r.name + " · " + s.name + " #%{customdata}: %{y}<extra></extra>"});
        seen[part] = true;
      });
      layout["xaxis" + ax] = {tickfont: {size: 9}, nticks: 4, automargin: true};
      layout["yaxis" + ax] = {range: data.yrange, tickfont: {size: 9}, nticks: 5, zeroline: true};
      annotations.push({text: "<b>" + r.name.replace(/</g, "&lt;") + "</b>", showarrow: false, font: {size: 11},
                        xref: "x" + ax + " domain", yref: "y" + ax + " domain", x: 0, y: 1.02, xanchor: "left", yanchor: "bottom"});
    });
    if (!n) annotations.push({text: "no scores yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5});
    layout.annotations = annotations;
    el.style.height = layout.height + "px";
    el.style.minHeight = "0";
    Plotly.newPlot(el, traces, layout, {displayModeBar: false, responsive: true});
  }
  if (who) who.addEventListener("change", draw);
  window.w2slabProgress = {draw: draw, setData: setData};
  draw();
})();
