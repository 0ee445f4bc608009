// memwatch flame graph: click a frame to zoom into it, click the title bar or "Reset zoom" to
// zoom out, "Search" (or Ctrl-F / "/") to highlight frames matching a regular expression with
// the share of live bytes they hold. window.memwatchFlame exposes zoom/search/reset for scripts.
(function () {
  "use strict";
  var svg = document.documentElement;
  var W = +svg.getAttribute("data-width"), PAD = +svg.getAttribute("data-pad");
  var TOTAL = +svg.getAttribute("data-total");
  var frames = Array.prototype.slice.call(document.querySelectorAll("g.f"));
  var zoomed = null;
  var resetZoomBtn = document.getElementById("reset-zoom");
  var resetSearchBtn = document.getElementById("reset-search");
  var matchedText = document.getElementById("matched");
  var details = document.getElementById("details");
  var CHAR = 0.59 * 12;

  function attr(g, name) { return +g.getAttribute("data-" + name); }

  function fit(g, width) {
    var text = g.querySelector("text");
    var name = g.getAttribute("data-n");
    var room = Math.floor((width - 6) / CHAR);
    if (room < 3) { text.textContent = ""; return; }
    text.textContent = name.length <= room ? name : name.slice(0, room - 2) + "..";
  }

  function place(g, x, w) {
    var rect = g.querySelector("rect"), text = g.querySelector("text");
    rect.setAttribute("x", x.toFixed(1));
    rect.setAttribute("width", Math.max(w, 0).toFixed(1));
    text.setAttribute("x", (x + 3).toFixed(1));
    fit(g, w);
  }

  function zoom(g) {
    var x0 = attr(g, "x"), w0 = attr(g, "w"), l0 = attr(g, "l");
    var scale = (W - 2 * PAD) / w0;
    frames.forEach(function (f) {
      var x = attr(f, "x"), w = attr(f, "w"), l = attr(f, "l");
      var inside = x >= x0 && x + w <= x0 + w0 + 1e-9;
      if (l >= l0 && inside) {
        f.style.display = "";
        f.classList.remove("parent");
        place(f, PAD + (x - x0) * scale, w * scale);
      } else if (l < l0 && x <= x0 && x + w >= x0 + w0 - 1e-9) {
        f.style.display = "";
        f.classList.add("parent");
        place(f, PAD, W - 2 * PAD);
      } else {
        f.style.display = "none";
      }
    });
    zoomed = g;
    resetZoomBtn.style.display = "";
  }

  function reset() {
    var scale = (W - 2 * PAD) / TOTAL;
    frames.forEach(function (f) {
      f.style.display = "";
      f.classList.remove("parent");
      place(f, PAD + attr(f, "x") * scale, attr(f, "w") * scale);
    });
    zoomed = null;
    resetZoomBtn.style.display = "none";
  }

  // Share of the (zoomed) total held by frames matching `term`: the union of their byte
  // ranges, so a match nested in another match is not counted twice.
  function search(term) {
    var re;
    try { re = new RegExp(term); } catch (e) { matchedText.textContent = "bad pattern: " + e.message; return null; }
    var ranges = [];
    frames.forEach(function (f) {
      var hit = re.test(f.getAttribute("data-n")) || re.test(f.getAttribute("data-s") || "");
      f.classList.toggle("match", hit);
      if (hit) ranges.push([attr(f, "x"), attr(f, "x") + attr(f, "w")]);
    });
    ranges.sort(function (a, b) { return a[0] - b[0]; });
    var bytes = 0, end = -1;
    ranges.forEach(function (r) {
      if (r[0] >= end) { bytes += r[1] - r[0]; end = r[1]; }
      else if (r[1] > end) { bytes += r[1] - end; end = r[1]; }
    });
    var share = TOTAL ? 100 * bytes / TOTAL : 0;
    matchedText.textContent = "Matched: " + share.toFixed(1) + "% (" + ranges.length + " frames)";
    resetSearchBtn.style.display = "";
    return share;
  }

  function resetSearch() {
    frames.forEach(function (f) { f.classList.remove("match"); });
    matchedText.textContent = "";
    resetSearchBtn.style.display = "none";
  }

  function askSearch() {
    var term = window.prompt("Search frames (regular expression on names and file:line)", "");
    if (term) search(term);
  }

  frames.forEach(function (f) {
    f.addEventListener("click", function () { zoom(f); });
    f.addEventListener("mouseover", function () {
      details.textContent = f.getAttribute("data-n") + "  " + (f.getAttribute("data-s") || "") +
        "  " + f.getAttribute("data-b");
    });
    f.addEventListener("mouseout", function () { details.textContent = ""; });
  });
  resetZoomBtn.addEventListener("click", reset);
  document.getElementById("search").addEventListener("click", askSearch);
  resetSearchBtn.addEventListener("click", resetSearch);
  document.getElementById("title").addEventListener("click", reset);
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey && e.key === "f") || e.key === "/") { e.preventDefault(); askSearch(); }
    if (e.key === "Escape") { reset(); resetSearch(); }
  });
  window.memwatchFlame = { zoom: zoom, reset: reset, search: search, resetSearch: resetSearch, frames: frames };
})();
