/* Audit history page: the step list drives the diagram. Selecting a step (click, Enter,
 * arrow keys, or #step-N in the address) marks its BPMN element (the row's task_name) with
 * "cf-selected", drawing the step's own process version first when it differs (an instance
 * migrated between versions). Uses window.CareflowDiagram from diagram.js. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var list = document.getElementById("steps");
    var box = document.getElementById("audit-diagram");
    if (!list || !box || !window.CareflowDiagram) { return; }
    var D = window.CareflowDiagram;
    var steps = Array.prototype.slice.call(list.querySelectorAll("li.step"));
    var sources = JSON.parse(box.dataset.sources || "{}");
    var note = document.getElementById("selected-step");
    var versionLabel = document.getElementById("diagram-version");
    var bpmn = D.viewer(box);
    var shown = null;    // the version drawn now
    var marked = null;   // the element carrying cf-selected
    var selected = null; // the selected <li>
    var queue = Promise.resolve();

    /* As tall as the diagram needs at the box's width (a wide process leaves no empty band). */
    function fitHeight(canvas) {
      canvas.zoom("fit-viewport");
      var inner = canvas.viewbox().inner;
      if (inner.width > 0) {
        var height = Math.round(box.clientWidth * inner.height / inner.width) + 48;
        box.style.height = Math.max(240, Math.min(560, height)) + "px";
        canvas.resized();
      }
      canvas.zoom("fit-viewport", "auto");
    }

    function draw(version) {
      if (!bpmn || !version || !sources[version]) { return Promise.resolve(shown !== null); }
      if (shown === version) { return Promise.resolve(true); }
      return D.load(bpmn, sources[version]).then(function (info) {
        shown = version;
        marked = null;
        var canvas = bpmn.get("canvas");
        var registry = bpmn.get("elementRegistry");
        steps.forEach(function (s) {
          var id = s.dataset.element;
          if (s.dataset.done && s.dataset.version === version && id && registry.get(id)) {
            canvas.addMarker(id, "cf-done");
          }
        });
        fitHeight(canvas);
        versionLabel.textContent = box.dataset.versionLabel.replace("{v}", info.version);
        box.dataset.rendered = "true";
        return true;
      });
    }

    function mark(step) {
      var canvas = bpmn.get("canvas");
      var registry = bpmn.get("elementRegistry");
      if (marked && registry.get(marked)) { canvas.removeMarker(marked, "cf-selected"); }
      marked = null;
      var id = step.dataset.element;
      if (id && registry.get(id)) {
        canvas.addMarker(id, "cf-selected");
        marked = id;
        box.dataset.selected = id;
      } else {
        box.dataset.selected = "";
        note.textContent = step.dataset.title + " — " + note.dataset.noElement;
      }
    }

    function select(step, focus) {
      if (selected) {
        selected.classList.remove("selected");
        selected.querySelector(".step-select").setAttribute("aria-pressed", "false");
      }
      selected = step;
      step.classList.add("selected");
      var button = step.querySelector(".step-select");
      button.setAttribute("aria-pressed", "true");
      if (focus) { button.focus(); }
      step.scrollIntoView({ block: "nearest" });
      if (window.history && window.history.replaceState) {
        window.history.replaceState(null, "", "#step-" + step.dataset.seq);
      }
      note.textContent = step.dataset.title;
      queue = queue
        .then(function () { return draw(step.dataset.version || shown); })
        .then(function (ok) { if (ok && selected === step) { mark(step); } })
        .catch(function () { D.message(box, box.dataset.error); });
    }

    steps.forEach(function (step, i) {
      step.addEventListener("click", function (event) {
        if (event.target.closest("form, details, a, textarea, input")) { return; }
        select(step, false);
      });
      step.querySelector(".step-select").addEventListener("keydown", function (event) {
        var next = event.key === "ArrowDown" ? steps[i + 1] : event.key === "ArrowUp" ? steps[i - 1] : null;
        if (next) { event.preventDefault(); select(next, true); }
      });
    });

    if (!bpmn) { return; }
    queue = draw(box.dataset.version).catch(function () { D.message(box, box.dataset.error); });
    var match = /^#step-(\d+)$/.exec(window.location.hash);
    var initial = match && document.getElementById("step-" + match[1]);
    if (initial) { select(initial, false); }
  });
}());
