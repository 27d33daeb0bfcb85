// pollen dashboard: keep the counts per state current without reloading the page.
// Reads /api/counts every 3 s and writes each figure into the elements marked data-count.
(function () {
  "use strict";
  var box = document.getElementById("live-counts");
  if (!box || !window.fetch) { return; }
  var source = box.getAttribute("data-source");
  function show(name, value) {
    var nodes = document.querySelectorAll('[data-count="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) {
      if (nodes[i].textContent !== String(value)) {
        nodes[i].textContent = String(value);
        nodes[i].classList.add("changed");
      }
    }
  }
  function refresh() {
    fetch(source, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (counts) {
        if (!counts) { return; }
        var seen = document.querySelectorAll("[data-count]");
        for (var i = 0; i < seen.length; i++) {
          var name = seen[i].getAttribute("data-count");
          if (name in counts.by_status) { show(name, counts.by_status[name]); }
          else if (name in counts) { show(name, counts[name]); }
          else if (name !== "dead_letters") { show(name, 0); }
        }
        box.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () { /* the next round tries again */ });
  }
  refresh();
  window.setInterval(refresh, 3000);
})();
