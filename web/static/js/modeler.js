/* Process modeler: the bpmn-js Modeler (prebuilt bundle from npm) with Careflow's own
 * properties panel and form editor.
 * - Properties of the selected element: name (label); for user and manual tasks also the lane
 *   (choosing another lane moves the task into it, which updates the lane's flowNodeRefs), the
 *   form and the dueIn / dueAt / assignee properties, kept as spiffworkflow:property extension
 *   elements (edited generically, so every other extension element round-trips untouched).
 * - Form editor: the JSON Schema of a task's form with meta-validation and a live preview, both
 *   from the server (the preview is the task page's own form renderer). Edited forms are sent
 *   with the save and versioned with the BPMN.
 * - Save: saveXML → POST JSON (CSRF token in a header) → the engine's deploy validation. Problems
 *   are listed and marked on the elements they concern; a valid save is a new version.
 * Configuration and texts come from the JSON block #modeler-config (no inline scripts: CSP). */
(function () {
  "use strict";
  var SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core";
  var FORM_PROP = "formJsonSchemaFilename";
  var FORM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,150}\.json$/;
  var DURATION = /^P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$/;
  var HUMAN = ["bpmn:UserTask", "bpmn:ManualTask"];

  var cfg, T, modeler, modeling, moddle, registry, canvas, overlays, selection, commandStack;
  var forms = {};     // form file name -> schema (of the version the page is based on)
  var edited = {};    // form file name -> JSON text edited on this page (sent with the next save)
  var dirty = false;
  var current = null; // the element shown in the properties panel
  var marked = [];    // element ids marked with problems

  function $(id) { return document.getElementById(id); }

  function fmt(text, values) {
    return String(text).replace(/\{(\w+)\}/g, function (m, k) { return k in values ? values[k] : m; });
  }

  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) { return; }
      if (k === "text") { node.textContent = v; }
      else if (k === "className") { node.className = v; }
      else if (k.slice(0, 2) === "on") { node.addEventListener(k.slice(2), v); }
      else { node.setAttribute(k, v === true ? "" : v); }
    });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); }
    });
    return node;
  }

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrf() },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (data) { return { status: r.status, body: data }; },
                           function () { return { status: r.status, body: {} }; });
    });
  }

  // -- status line -------------------------------------------------------------------------

  function status(kind, text, links) {
    var box = $("status");
    box.className = "modeler-status " + kind;
    box.replaceChildren(h("span", { text: text }));
    (links || []).forEach(function (l) {
      box.appendChild(h("a", { href: l.href, className: "btn small", text: l.text, id: l.id }));
    });
    box.hidden = false;
  }

  // -- spiffworkflow:property values (generic moddle elements) -----------------------------

  function bo(element) { return element.businessObject; }

  function propsElement(element) {
    var ext = bo(element).extensionElements;
    var values = ext ? ext.get("values") || [] : [];
    for (var i = 0; i < values.length; i++) {
      if (values[i].$type === "spiffworkflow:properties") { return values[i]; }
    }
    return null;
  }

  function getProperty(element, name) {
    var props = propsElement(element);
    var children = (props && props.$children) || [];
    for (var i = 0; i < children.length; i++) {
      if (children[i].name === name) { return children[i].value || ""; }
    }
    return "";
  }

  function setProperty(element, name, value) {
    var b = bo(element);
    var ext = b.extensionElements;
    if (!ext) {
      ext = moddle.create("bpmn:ExtensionElements", { values: [] });
      ext.$parent = b;
      modeling.updateModdleProperties(element, b, { extensionElements: ext });
    }
    var props = propsElement(element);
    if (!props) {
      if (!value) { return; }
      props = moddle.createAny("spiffworkflow:properties", SPIFF, { $children: [] });
      props.$parent = ext;
      modeling.updateModdleProperties(element, ext, { values: (ext.get("values") || []).concat([props]) });
    }
    var children = props.$children || [];
    var existing = children.filter(function (c) { return c.name === name; })[0];
    if (!value) {
      if (existing) {
        modeling.updateModdleProperties(element, props, { $children: children.filter(function (c) { return c !== existing; }) });
      }
    } else if (existing) {
      if (existing.value !== value) { modeling.updateModdleProperties(element, existing, { value: value }); }
    } else {
      var p = moddle.createAny("spiffworkflow:property", SPIFF, { name: name, value: value });
      p.$parent = props;
      modeling.updateModdleProperties(element, props, { $children: children.concat([p]) });
    }
  }

  // -- lanes --------------------------------------------------------------------------------

  function leafLanes() {
    return registry.filter(function (e) {
      if (e.type !== "bpmn:Lane") { return false; }
      var child = bo(e).childLaneSet;
      return !(child && child.lanes && child.lanes.length);
    }).sort(function (a, b) { return a.y - b.y; });
  }

  function laneOf(element) {
    var lanes = leafLanes();
    for (var i = 0; i < lanes.length; i++) {
      if ((bo(lanes[i]).flowNodeRef || []).indexOf(bo(element)) >= 0) { return { lane: lanes[i], inherited: false }; }
    }
    var parent = element.parent;
    while (parent && parent.type === "bpmn:SubProcess") {
      for (var j = 0; j < lanes.length; j++) {
        if ((bo(lanes[j]).flowNodeRef || []).indexOf(bo(parent)) >= 0) { return { lane: lanes[j], inherited: true }; }
      }
      parent = parent.parent;
    }
    return { lane: null, inherited: element.parent && element.parent.type === "bpmn:SubProcess" };
  }

  function laneLabel(lane) {
    var name = bo(lane).name || lane.id;
    var group = cfg.groups[name];
    return group ? name + " · " + group : name;
  }

  function moveToLane(element, lane) {
    var dy = Math.round(lane.y + lane.height / 2 - (element.y + element.height / 2));
    var dx = 0;
    if (element.x < lane.x + 40) { dx = lane.x + 40 - element.x; }
    if (dy || dx) { modeling.moveElements([element], { x: dx, y: dy }); }
  }

  // -- properties panel ---------------------------------------------------------------------

  function field(id, label, control, hint, error) {
    return h("div", { className: "field" + (error ? " has-error" : "") }, [
      h("label", { "for": id, text: label }), control,
      hint ? h("p", { className: "hint", text: hint }) : null,
      error ? h("p", { className: "field-error", id: id + "-error", text: error }) : null
    ]);
  }

  function textInput(id, value, commit) {
    var input = h("input", { type: "text", id: id, value: value, autocomplete: "off" });
    input.value = value;
    input.addEventListener("change", function () { commit(input.value.trim()); });
    input.addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); input.blur(); } });
    return input;
  }

  function typeLabel(element) {
    if (element.type === "bpmn:UserTask") { return T.userTask; }
    if (element.type === "bpmn:ManualTask") { return T.manualTask; }
    return element.type.replace(/^bpmn:/, "");
  }

  function formNames() {
    var names = Object.keys(forms).concat(Object.keys(edited));
    return names.filter(function (n, i) { return names.indexOf(n) === i; }).sort();
  }

  function renderPanel() {
    var body = $("props-body");
    var element = current;
    if (!element || element.type === "bpmn:Process" || element.type === "bpmn:Collaboration" || !registry.get(element.id)) {
      current = null;
      body.replaceChildren(
        h("p", { className: "muted", text: T.noSelection }),
        h("dl", { className: "props" }, [h("dt", { text: T.process }), h("dd", { className: "mono", text: cfg.processId }),
                                         h("dt", { text: "v" }), h("dd", { text: String(cfg.version) })]));
      return;
    }
    var nodes = [
      h("div", { className: "props-head" }, [h("span", { className: "badge", text: typeLabel(element) }),
                                             h("span", { className: "mono small muted", text: element.id })]),
      field("prop-name", T.name, textInput("prop-name", bo(element).name || "", function (v) {
        if (v !== (bo(element).name || "")) { modeling.updateLabel(element, v); }
      }), element.type === "bpmn:Lane" ? fmt(T.laneNameHint, { groups: Object.keys(cfg.groups).join(", ") }) : T.nameHint)
    ];
    if (HUMAN.indexOf(element.type) >= 0) {
      nodes = nodes.concat(humanTaskFields(element));
    }
    body.replaceChildren.apply(body, nodes);
  }

  function humanTaskFields(element) {
    var out = [];
    // lane
    var where = laneOf(element);
    var laneSelect = h("select", { id: "prop-lane", disabled: where.inherited });
    laneSelect.appendChild(h("option", { value: "", text: T.noLane }));
    leafLanes().forEach(function (lane) {
      var opt = h("option", { value: lane.id, text: laneLabel(lane) });
      if (where.lane && where.lane.id === lane.id) { opt.selected = true; }
      laneSelect.appendChild(opt);
    });
    laneSelect.addEventListener("change", function () {
      var lane = registry.get(laneSelect.value);
      if (lane) { moveToLane(element, lane); }
    });
    out.push(field("prop-lane", T.lane, laneSelect, where.inherited ? T.laneInherited : T.laneHint,
                   where.lane || where.inherited ? null : T.noLaneError));

    // form
    var form = getProperty(element, FORM_PROP);
    var formSelect = h("select", { id: "prop-form" });
    formSelect.appendChild(h("option", { value: "", text: T.noForm }));
    var names = formNames();
    if (form && names.indexOf(form) < 0) { names.push(form); }
    names.forEach(function (n) {
      var opt = h("option", { value: n, text: n + (edited[n] ? " *" : "") });
      if (n === form) { opt.selected = true; }
      formSelect.appendChild(opt);
    });
    formSelect.appendChild(h("option", { value: "__new__", text: T.newForm }));
    var newBox = h("div", { className: "new-form", hidden: true });
    var newName = h("input", { type: "text", id: "prop-new-form", title: T.newFormHint, autocomplete: "off" });
    var newError = h("p", { className: "field-error" });
    var createBtn = h("button", { type: "button", className: "btn small", id: "prop-new-form-create", text: T.create });
    newBox.append(h("label", { "for": "prop-new-form", text: T.newFormName }),
                  h("div", { className: "inline-row" }, [newName, createBtn]),
                  h("p", { className: "hint", text: T.newFormHint }), newError);
    formSelect.addEventListener("change", function () {
      if (formSelect.value === "__new__") {
        newBox.hidden = false;
        newName.value = (element.id || "form").toLowerCase().replace(/[^a-z0-9._-]+/g, "-") + ".schema.json";
        newName.focus();
        return;
      }
      newBox.hidden = true;
      setProperty(element, FORM_PROP, formSelect.value);
      rerender("prop-form");
    });
    createBtn.addEventListener("click", function () {
      var name = newName.value.trim();
      if (!FORM_NAME.test(name)) { newError.textContent = T.badFormName; return; }
      if (formNames().indexOf(name) >= 0) { newError.textContent = T.formExists; return; }
      edited[name] = starterSchema(element);
      dirty = true;
      setProperty(element, FORM_PROP, name);
      renderPanel();
      openFormEditor(name);
    });
    var formControls = h("div", {}, [formSelect]);
    out.push(field("prop-form", T.form, formControls, null, element.type === "bpmn:UserTask" && !form ? T.noFormError : null));
    out.push(newBox);
    if (form) {
      out.push(h("div", { className: "form-actions" }, [
        h("button", { type: "button", className: "btn small", id: "prop-edit-form", text: T.editForm,
                      onclick: function () { openFormEditor(form); } }),
        edited[form] ? h("span", { className: "small muted", text: T.formEdited }) : null
      ]));
    }

    // SLA and assignment
    var dueIn = getProperty(element, "dueIn");
    var dueField = field("prop-dueIn", T.dueIn, textInput("prop-dueIn", dueIn, function (v) {
      setProperty(element, "dueIn", v);
      markDuration(dueField, v);
    }), T.dueInHint);
    markDuration(dueField, dueIn);
    out.push(dueField);
    out.push(field("prop-dueAt", T.dueAt, textInput("prop-dueAt", getProperty(element, "dueAt"), function (v) {
      setProperty(element, "dueAt", v);
    }), T.dueAtHint));
    out.push(field("prop-assignee", T.assignee, textInput("prop-assignee", getProperty(element, "assignee"),
      function (v) { setProperty(element, "assignee", v); }), T.assigneeHint));
    return out;
  }

  function markDuration(box, value) {
    var bad = value && !DURATION.test(value);
    var error = box.querySelector(".field-error");
    box.classList.toggle("has-error", !!bad);
    if (bad && !error) { box.appendChild(h("p", { className: "field-error", id: "prop-dueIn-error", text: T.dueInBad })); }
    if (!bad && error) { error.remove(); }
  }

  function rerender(focusId) {
    renderPanel();
    var node = focusId && $(focusId);
    if (node) { node.focus(); }
  }

  function starterSchema(element) {
    var name = bo(element).name || element.id;
    var parts = name.split(" / ");
    return JSON.stringify({
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "type": "object",
      "title": (parts[1] || parts[0]).trim(),
      "x-title-zh": parts[0].trim(),
      "required": ["notes"],
      "properties": {
        "notes": { "type": "string", "title": "Notes", "x-title-zh": "备注", "minLength": 1, "maxLength": 2000 }
      }
    }, null, 2);
  }

  // -- form editor -------------------------------------------------------------------------

  var editing = null;
  var checkTimer = null;
  var checkSeq = 0;

  function openFormEditor(name) {
    editing = name;
    var dialog = $("form-dialog");
    $("fd-title").textContent = fmt(T.formTitle, { name: name });
    $("fd-text").value = edited[name] !== undefined ? edited[name]
      : JSON.stringify(forms[name] || {}, null, 2);
    $("fd-preview").replaceChildren();
    $("fd-problems").replaceChildren();
    if (typeof dialog.showModal === "function") { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
    checkForm();
    $("fd-text").focus();
  }

  function closeFormEditor() {
    var dialog = $("form-dialog");
    if (dialog.open) { dialog.close(); }
    editing = null;
  }

  function scheduleCheck() {
    window.clearTimeout(checkTimer);
    checkTimer = window.setTimeout(checkForm, 300);
  }

  function problemItem(p) {
    var where = [];
    if (p.file) { where.push(h("span", { className: "mono", text: p.file })); }
    if (p.line) { where.push(h("span", { className: "mono", text: fmt(T.line, { n: p.line }) })); }
    if (p.element_id) { where.push(h("span", { className: "badge", text: fmt(T.element, { e: p.element_id }) })); }
    if (p.field) { where.push(h("span", { className: "badge", text: fmt(T.field, { f: p.field }) })); }
    return h("li", { "data-element-id": p.element_id || null }, [
      where.length ? h("div", { className: "pl-where" }, where) : null,
      h("div", { className: "pl-message", text: p.message }),
      p.hint ? h("div", { className: "pl-hint", text: p.hint }) : null
    ]);
  }

  function checkForm() {
    var seq = ++checkSeq;
    var state = $("fd-status");
    state.className = "fd-status";
    state.textContent = T.formChecking;
    postJSON(cfg.checkUrl, { text: $("fd-text").value }).then(function (res) {
      if (seq !== checkSeq) { return; }
      var body = res.body || {};
      var problems = body.problems || [];
      $("fd-problems").replaceChildren.apply($("fd-problems"), problems.map(problemItem));
      state.className = "fd-status " + (body.valid ? "ok" : "bad");
      state.textContent = body.valid ? T.formValid : fmt(T.problems, {}) + ": " + problems.length;
      $("fd-text").setAttribute("aria-invalid", body.valid ? "false" : "true");
      var preview = $("fd-preview");
      if (body.html) {
        preview.innerHTML = body.html; // rendered (and escaped) by the server's form renderer
        preview.classList.remove("stale");
      } else {
        preview.classList.add("stale");
        if (!preview.firstChild) { preview.appendChild(h("p", { className: "muted", text: T.formPreviewOff })); }
      }
    }).catch(function () {
      if (seq === checkSeq) { state.className = "fd-status bad"; state.textContent = T.failed; }
    });
  }

  function applyForm() {
    if (editing) {
      edited[editing] = $("fd-text").value;
      dirty = true;
    }
    closeFormEditor();
    renderPanel();
  }

  // -- problems on the diagram ---------------------------------------------------------------

  function clearProblems() {
    overlays.remove({ type: "cf-problem" });
    marked.forEach(function (id) { if (registry.get(id)) { canvas.removeMarker(id, "cf-error"); } });
    marked = [];
    $("problems").replaceChildren();
    $("problems-box").hidden = true;
  }

  function shapeFor(id) {
    if (!id) { return null; }
    var shape = registry.get(id);
    if (shape) { return shape; }
    return registry.filter(function (e) {
      return e.type === "bpmn:Participant" && bo(e).processRef && bo(e).processRef.id === id;
    })[0] || null;
  }

  function showProblems(problems) {
    clearProblems();
    var byElement = {};
    var list = $("problems");
    problems.forEach(function (p) {
      var item = problemItem(p);
      var shape = shapeFor(p.element_id);
      if (shape) {
        item.classList.add("clickable");
        item.tabIndex = 0;
        var go = function () { selection.select(shape); canvas.scrollToElement(shape); };
        item.addEventListener("click", go);
        item.addEventListener("keydown", function (e) { if (e.key === "Enter") { go(); } });
        (byElement[shape.id] = byElement[shape.id] || []).push(p.message);
      }
      list.appendChild(item);
    });
    Object.keys(byElement).forEach(function (id) {
      canvas.addMarker(id, "cf-error");
      marked.push(id);
      var badge = h("div", { className: "cf-problem-badge", title: byElement[id].join("\n"),
                             text: String(byElement[id].length) });
      overlays.add(id, "cf-problem", { position: { top: -10, right: 10 }, html: badge });
    });
    $("problems-title").textContent = T.problems + " (" + problems.length + ")";
    $("problems-box").hidden = problems.length === 0;
  }

  // -- save ----------------------------------------------------------------------------------

  function save() {
    var button = $("save");
    button.disabled = true;
    clearProblems();
    status("info", T.saving);
    modeler.saveXML({ format: true }).then(function (result) {
      return postJSON(cfg.deployUrl, { xml: result.xml, forms: edited, comment: $("comment").value });
    }).then(function (res) {
      var body = res.body || {};
      if (res.status === 201 || res.status === 200) {
        saved(body, res.status === 201);
      } else if (res.status === 422) {
        status("error", body.message || T.invalid);
        showProblems(body.problems || []);
      } else if (res.status === 413) {
        status("error", body.message || T.tooLarge);
      } else {
        status("error", body.message || T.failed);
      }
    }).catch(function () {
      status("error", T.failed);
    }).then(function () { button.disabled = false; });
  }

  function saved(body, created) {
    Object.keys(edited).forEach(function (name) {
      try { forms[name] = JSON.parse(edited[name]); } catch (e) { /* the engine accepted it, so it parses */ }
    });
    edited = {};
    dirty = false;
    cfg.deployUrl = body.deploy_url;
    cfg.version = body.version;
    $("base-version").textContent = fmt(T.basedOn, { v: body.version });
    if (window.history && window.history.replaceState) { window.history.replaceState(null, "", body.edit_url); }
    $("comment").value = "";
    status(created ? "ok" : "info", fmt(created ? T.saved : T.unchanged, { v: body.version }), [
      { href: body.versions_url, text: T.openVersions, id: "saved-versions-link" }
    ]);
    renderPanel();
  }

  function fit() {
    // fit, then leave room on the left for the palette
    canvas.zoom("fit-viewport", "auto");
    canvas.zoom(Math.min(canvas.zoom() * 0.92, 1.2), "auto");
    canvas.scroll({ dx: 28, dy: 0 });
  }

  function download() {
    modeler.saveXML({ format: true }).then(function (result) {
      var url = URL.createObjectURL(new Blob([result.xml], { type: "application/xml" }));
      var a = h("a", { href: url, download: cfg.mainFile || (cfg.processId + ".bpmn") });
      document.body.appendChild(a);
      a.click();
      a.remove();
      window.setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    });
  }

  // -- start -----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", function () {
    var data = $("modeler-config");
    if (!data) { return; }
    cfg = JSON.parse(data.textContent);
    T = cfg.texts;
    var box = $("canvas");
    function message(text) { box.replaceChildren(h("div", { className: "diagram-msg", text: text })); }
    if (typeof window.BpmnJS !== "function") { message(T.missing); return; }

    modeler = new window.BpmnJS({ container: box });
    modeling = modeler.get("modeling");
    moddle = modeler.get("moddle");
    registry = modeler.get("elementRegistry");
    canvas = modeler.get("canvas");
    overlays = modeler.get("overlays");
    selection = modeler.get("selection");
    commandStack = modeler.get("commandStack");
    var eventBus = modeler.get("eventBus");

    eventBus.on("selection.changed", function (e) {
      var chosen = e.newSelection.length === 1 ? e.newSelection[0] : null;
      current = chosen && chosen.labelTarget ? chosen.labelTarget : chosen;
      renderPanel();
    });
    eventBus.on("commandStack.changed", function () {
      dirty = true;
      $("undo").disabled = !commandStack.canUndo();
      $("redo").disabled = !commandStack.canRedo();
      var active = document.activeElement;
      if (!active || !$("props").contains(active)) { renderPanel(); }
    });

    $("undo").addEventListener("click", function () { commandStack.undo(); });
    $("redo").addEventListener("click", function () { commandStack.redo(); });
    $("fit").addEventListener("click", fit);
    $("download").addEventListener("click", download);
    $("save").addEventListener("click", save);
    $("fd-text").addEventListener("input", scheduleCheck);
    $("fd-apply").addEventListener("click", applyForm);
    $("fd-cancel").addEventListener("click", closeFormEditor);
    $("form-dialog").addEventListener("close", function () { editing = null; });
    document.addEventListener("keydown", function (e) {
      if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); if (!$("save").disabled) { save(); } }
    });
    window.addEventListener("beforeunload", function (e) {
      if (dirty) { e.preventDefault(); e.returnValue = T.leave; }
    });

    fetch(cfg.modelUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (info) {
        forms = info.forms || {};
        cfg.mainFile = info.main_file;
        return modeler.importXML(info.xml);
      })
      .then(function () {
        fit();
        dirty = false;
        renderPanel();
        $("save").disabled = false;
        box.dataset.ready = "true";
      })
      .catch(function () { message(T.loadError); });
  });
}());
