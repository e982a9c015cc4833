/* Migration page: "select all", and running the migration one batch per request with a
 * progress bar; each row shows what happened to its instance. Without JavaScript the form
 * posts the whole selection at once and a result page lists the outcome. */
(function () {
  "use strict";
  function fmt(text, values) {
    return String(text).replace(/\{(\w+)\}/g, function (m, k) { return k in values ? values[k] : m; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("migrate-form");
    var data = document.getElementById("migrate-config");
    if (!form || !data) { return; }
    var cfg = JSON.parse(data.textContent);
    var T = cfg.texts;
    var boxes = Array.prototype.slice.call(form.querySelectorAll("input[name=instance_id]"));
    var all = document.getElementById("select-all");
    all.hidden = false;

    function syncAll() {
      var n = boxes.filter(function (b) { return b.checked; }).length;
      all.checked = n === boxes.length;
      all.indeterminate = n > 0 && n < boxes.length;
    }
    all.addEventListener("change", function () { boxes.forEach(function (b) { b.checked = all.checked; }); syncAll(); });
    boxes.forEach(function (b) { b.addEventListener("change", syncAll); });
    syncAll();

    var submitter = null;
    form.querySelectorAll("button[type=submit]").forEach(function (b) {
      b.addEventListener("click", function () { submitter = b; });
    });

    function outcome(id, ok, reasons) {
      var row = form.querySelector("tr[data-instance='" + id + "']");
      if (!row) { return; }
      var cell = row.querySelector("td.outcome");
      var badge = document.createElement("span");
      badge.className = "badge " + (ok ? "b-added" : "b-removed");
      badge.textContent = ok ? T.migrated : T.failed;
      cell.replaceChildren(badge);
      if (!ok && reasons && reasons.length) {
        var ul = document.createElement("ul");
        ul.className = "reasons";
        reasons.forEach(function (r) { var li = document.createElement("li"); li.textContent = r; ul.appendChild(li); });
        cell.appendChild(ul);
      }
      row.classList.remove("movable", "blocked");
      row.classList.add(ok ? "done-ok" : "done-failed");
      var box = row.querySelector("input[name=instance_id]");
      if (box) { box.checked = false; box.disabled = ok; }
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var everyone = submitter && submitter.name === "all";
      var ids = boxes.filter(function (b) { return (everyone || b.checked) && !b.disabled; })
        .map(function (b) { return parseInt(b.value, 10); });
      var done = document.getElementById("mig-done");
      var progress = document.getElementById("mig-progress");
      progress.hidden = false;
      if (!ids.length) { done.textContent = T.nothingSelected; return; }
      var buttons = form.querySelectorAll("button[type=submit]");
      buttons.forEach(function (b) { b.disabled = true; });
      var bar = document.getElementById("mig-bar");
      var count = document.getElementById("mig-count");
      var token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
      var total = ids.length, finished = 0, ok = 0, bad = 0;
      bar.max = total;
      bar.value = 0;
      done.textContent = "";
      count.textContent = fmt(T.progress, { done: 0, total: total });

      function next() {
        if (!ids.length) {
          done.textContent = fmt(T.done, { ok: ok, bad: bad });
          form.dataset.finished = "true";
          buttons.forEach(function (b) { b.disabled = false; });
          return;
        }
        var batch = ids.splice(0, cfg.batchSize);
        fetch(cfg.batchUrl, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": token },
          body: JSON.stringify({ from: parseInt(form.elements.from.value, 10), to: parseInt(form.elements.to.value, 10),
                                 instance_ids: batch })
        }).then(function (r) {
          return r.json().then(function (body) {
            if (!r.ok) { throw new Error(body.message || ("HTTP " + r.status)); }
            return body;
          });
        }).then(function (body) {
          body.migrated.forEach(function (o) { ok++; outcome(o.instance_id, true); });
          body.failed.forEach(function (o) { bad++; outcome(o.instance_id, false, o.reasons); });
          finished += batch.length;
          bar.value = finished;
          count.textContent = fmt(T.progress, { done: finished, total: total });
          next();
        }).catch(function (err) {
          done.textContent = fmt(T.error, { error: err.message });
          buttons.forEach(function (b) { b.disabled = false; });
        });
      }
      next();
    });
  });
}());
