/* Version diff page: both versions drawn with the bpmn-js NavigatedViewer (from npm), side by
 * side, with the element diff coloured (added on the right, removed on the left, changed and
 * moved on both). Panning or zooming one diagram moves the other the same way. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var panes = document.getElementById("diff-panes");
    if (!panes) { return; }
    var boxes = { a: document.getElementById("diagram-a"), b: document.getElementById("diagram-b") };

    function message(text) {
      ["a", "b"].forEach(function (side) {
        var div = document.createElement("div");
        div.className = "diagram-msg";
        div.textContent = text;
        boxes[side].replaceChildren(div);
      });
    }
    if (typeof window.BpmnJS !== "function") { message(panes.dataset.missing); return; }

    var viewers = { a: new window.BpmnJS({ container: boxes.a }), b: new window.BpmnJS({ container: boxes.b }) };

    function mark(viewer, ids, cls) {
      var canvas = viewer.get("canvas");
      var registry = viewer.get("elementRegistry");
      ids.forEach(function (id) { if (registry.get(id)) { canvas.addMarker(id, cls); } });
    }

    function ids(list) { return (list || []).map(function (e) { return typeof e === "string" ? e : e.id; }); }

    function link() {
      var syncing = false;
      ["a", "b"].forEach(function (side) {
        var other = side === "a" ? "b" : "a";
        viewers[side].on("canvas.viewbox.changed", function (e) {
          if (syncing) { return; }
          syncing = true;
          try { viewers[other].get("canvas").viewbox(e.viewbox); } finally { syncing = false; }
        });
      });
    }

    fetch(panes.dataset.src, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (info) {
        return Promise.all([viewers.a.importXML(info.a.xml), viewers.b.importXML(info.b.xml)]).then(function () {
          var el = info.elements || {};
          mark(viewers.a, ids(el.removed), "cf-removed");
          mark(viewers.b, ids(el.added), "cf-added");
          ["a", "b"].forEach(function (side) {
            mark(viewers[side], ids(el.changed), "cf-changed");
            mark(viewers[side], ids(el.moved), "cf-moved");
          });
          viewers.a.get("canvas").zoom("fit-viewport", "auto");
          viewers.b.get("canvas").viewbox(viewers.a.get("canvas").viewbox());
          link();
          panes.dataset.rendered = "true";
        });
      })
      .catch(function () { message(panes.dataset.error); });
  });
}());
