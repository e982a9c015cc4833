/* Careflow UI behaviour (progressive enhancement: every page works without it).
 * - SLA countdowns: keeps "… left" / "Overdue by …" texts and colours live.
 * - Repeatable rows of task forms: add and remove rows.
 */
(function () {
  "use strict";
  var i18n = document.getElementById("cf-i18n");
  if (!i18n) { return; }
  var T = i18n.dataset;

  function duration(ms) {
    var minutes = Math.floor(Math.abs(ms) / 60000);
    var days = Math.floor(minutes / 1440);
    var hours = Math.floor((minutes % 1440) / 60);
    var mins = minutes % 60;
    if (days) { return T.dh.replace("111", days).replace("222", hours); }
    if (hours) { return T.hm.replace("222", hours).replace("33", (mins < 10 ? "0" : "") + mins); }
    return T.m.replace("33", mins);
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".sla[data-due]").forEach(function (el) {
      if (!el.dataset.due) { return; }
      var due = Date.parse(el.dataset.due);
      var created = el.dataset.created ? Date.parse(el.dataset.created) : NaN;
      var left = due - now;
      var state;
      if (left <= 0) {
        state = "overdue";
        el.textContent = T.overdue.replace("{t}", duration(left));
      } else {
        var total = due - created;
        var near = left < 2 * 3600 * 1000 || (total > 0 && left < total * 0.25);
        state = near ? "near" : "ok";
        el.textContent = T.left.replace("{t}", duration(left));
      }
      el.classList.remove("ok", "near", "overdue");
      el.classList.add(state);
      var row = el.closest("tr[class*='sla-']");
      if (row) {
        row.classList.remove("sla-ok", "sla-near", "sla-overdue");
        row.classList.add("sla-" + state);
      }
    });
  }

  function setupRows(box) {
    var tbody = box.querySelector("tbody");
    var template = box.querySelector("template[data-row-template]");
    var add = box.querySelector("[data-add-row]");
    if (!tbody || !template || !add) { return; }
    var prefix = box.dataset.rows + "/";

    function nextIndex() {
      var max = -1;
      tbody.querySelectorAll("[name]").forEach(function (input) {
        var rest = input.name.slice(prefix.length);
        var n = parseInt(rest.split("/")[0], 10);
        if (input.name.indexOf(prefix) === 0 && !isNaN(n) && n > max) { max = n; }
      });
      return max + 1;
    }

    function addRemove(row) {
      var cell = row.lastElementChild;
      if (!cell || cell.querySelector("button")) { return; }
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "btn small danger";
      btn.textContent = T.remove;
      btn.addEventListener("click", function () {
        if (tbody.querySelectorAll("tr[data-row]").length > 1) { row.remove(); }
        else { row.querySelectorAll("input, select, textarea").forEach(function (i) { i.value = ""; i.checked = false; }); }
      });
      cell.appendChild(btn);
    }

    function isEmpty(row) {
      return Array.prototype.every.call(row.querySelectorAll("input, select, textarea"), function (i) {
        return (i.type === "radio" || i.type === "checkbox") ? !i.checked : !i.value;
      });
    }

    // With JavaScript the spare empty rows are not needed: keep one empty row at most.
    var rows = Array.prototype.slice.call(tbody.querySelectorAll("tr[data-row]"));
    var empties = rows.filter(isEmpty);
    empties.slice(rows.length === empties.length ? 1 : 0).forEach(function (r) { r.remove(); });
    tbody.querySelectorAll("tr[data-row]").forEach(addRemove);

    add.hidden = false;
    add.addEventListener("click", function () {
      var index = String(nextIndex());
      var html = template.innerHTML.split("__index__").join(index);
      var holder = document.createElement("tbody");
      holder.innerHTML = html;
      var row = holder.querySelector("tr");
      tbody.appendChild(row);
      addRemove(row);
      var first = row.querySelector("input, select, textarea");
      if (first) { first.focus(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 30000);
    document.querySelectorAll("[data-rows]").forEach(setupRows);
  });
}());
