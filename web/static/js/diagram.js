/* Instance page: draws the process with the bpmn-js NavigatedViewer (from npm) and marks
 * the current and completed steps. The XML and the element ids come from diagram.json.
 * window.CareflowDiagram (viewer, message, load) is shared with the audit history page. */
(function () {
  "use strict";

  function message(box, text) {
    var div = document.createElement("div");
    div.className = "diagram-msg";
    div.textContent = text;
    box.replaceChildren(div);
  }

  /* A viewer in `box`, or null (and a message) when the bpmn-js bundle is not installed. */
  function viewer(box) {
    if (typeof window.BpmnJS !== "function") { message(box, box.dataset.missing); return null; }
    return new window.BpmnJS({ container: box });
  }

  /* Fetch a diagram.json and draw its XML in `bpmn`; resolves with the JSON. */
  function load(bpmn, src) {
    return fetch(src, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (info) { return bpmn.importXML(info.xml).then(function () { return info; }); });
  }

  window.CareflowDiagram = { viewer: viewer, message: message, load: load };

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("diagram");
    if (!box) { return; }
    var bpmn = viewer(box);
    if (!bpmn) { return; }
    load(bpmn, box.dataset.src)
      .then(function (info) {
        var canvas = bpmn.get("canvas");
        var registry = bpmn.get("elementRegistry");
        (info.completed || []).forEach(function (id) { if (registry.get(id)) { canvas.addMarker(id, "cf-done"); } });
        (info.current || []).forEach(function (id) { if (registry.get(id)) { canvas.addMarker(id, "cf-current"); } });
        canvas.zoom("fit-viewport", "auto");
        box.dataset.rendered = "true";
      })
      .catch(function () { message(box, box.dataset.error); });
  });
}());
