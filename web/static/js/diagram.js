/* Instance page: draws the process with the bpmn-js NavigatedViewer (from npm) and marks
 * the current and completed steps. The XML and the element ids come from diagram.json. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("diagram");
    if (!box) { return; }
    function message(text) {
      var div = document.createElement("div");
      div.className = "diagram-msg";
      div.textContent = text;
      box.replaceChildren(div);
    }
    if (typeof window.BpmnJS !== "function") { message(box.dataset.missing); return; }
    var viewer = new window.BpmnJS({ container: box });
    fetch(box.dataset.src, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (info) {
        return viewer.importXML(info.xml).then(function () {
          var canvas = viewer.get("canvas");
          var registry = viewer.get("elementRegistry");
          (info.completed || []).forEach(function (id) { if (registry.get(id)) { canvas.addMarker(id, "cf-done"); } });
          (info.current || []).forEach(function (id) { if (registry.get(id)) { canvas.addMarker(id, "cf-current"); } });
          canvas.zoom("fit-viewport", "auto");
          box.dataset.rendered = "true";
        });
      })
      .catch(function () { message(box.dataset.error); });
  });
}());
