// Rating page of `sumrl human serve`. Plain JS, no dependencies.
// All study text is inserted with textContent (never innerHTML): documents may contain HTML
// and must show as literal text. The CSP forbids inline scripts as a second line of defence.
(function () {
  "use strict";

  // The rater's token is the last segment of /r/<token>; API calls send it as a bearer token.
  var token = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var rows = Array.prototype.slice.call(document.querySelectorAll(".rating-row"));
  var $ = function (id) { return document.getElementById(id); };

  var current = null;      // the assignment on screen
  var active = 0;          // index into rows of the highlighted criterion
  var startedAt = Date.now();
  var busy = false;        // a request is in flight: ignore repeated Enter presses

  function api(path, options) {
    options = options || {};
    var headers = { "Authorization": "Bearer " + token, "Accept": "application/json" };
    if (options.body) {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = csrf;
    }
    return fetch(path, {
      method: options.method || "GET", headers: headers, body: options.body,
      credentials: "omit", cache: "no-store"
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        return { status: resp.status, data: data };
      });
    });
  }

  function setStatus(text, kind) {
    var s = $("status");
    s.textContent = text;
    s.className = "status" + (kind ? " " + kind : "");
  }

  function setActive(i) {
    active = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach(function (r, k) { r.classList.toggle("active", k === active); });
    rows[active].scrollIntoView({ block: "nearest" });
  }

  function showProgress(p) {
    var shown = Math.min(p.done + 1, p.total);
    $("progress-bar").max = Math.max(p.total, 1);
    $("progress-bar").value = p.done;
    $("progress-text").textContent = p.done >= p.total
      ? p.done + " of " + p.total + " judged"
      : "Item " + shown + " of " + p.total + " (" + p.done + " judged)";
    document.title = "(" + p.done + "/" + p.total + ") Rate summaries";
  }

  function resetForm() {
    document.querySelectorAll('input[type="radio"]').forEach(function (el) { el.checked = false; });
    $("comment").value = "";
    setStatus("");
    setActive(0);
    startedAt = Date.now();
  }

  function render(data) {
    showProgress(data.progress);
    current = data.assignment;
    if (!current) {
      $("task").hidden = true;
      $("done").hidden = false;
      return;
    }
    $("done").hidden = true;
    $("task").hidden = false;
    $("document").textContent = current.document;
    $("document").scrollTop = 0;
    var q = $("query");
    q.hidden = !current.query;
    q.textContent = current.query ? "Query: " + current.query : "";
    $("left-text").textContent = current.left;
    $("right-text").textContent = current.right;
    resetForm();
    document.body.dataset.assignment = String(current.id);  // lets tests wait for the next item
  }

  function loadNext() {
    return api("/api/next").then(function (r) {
      if (r.status !== 200) {
        setStatus("Could not load the next item: " + (r.data.error || ("HTTP " + r.status)), "error");
        return;
      }
      render(r.data);
    }).catch(function () { setStatus("Network error; reload the page to retry.", "error"); });
  }

  function collect() {
    var missing = [];
    var choiceEl = document.querySelector('input[name="choice"]:checked');
    if (!choiceEl) missing.push("overall choice");
    var ratings = { left: {}, right: {} };
    var firstMissingRow = -1;
    rows.forEach(function (row, k) {
      var el = row.querySelector("input:checked");
      if (el) {
        ratings[row.dataset.side][row.dataset.criterion] = parseInt(el.value, 10);
      } else {
        missing.push((row.dataset.side === "left" ? "Summary 1" : "Summary 2") + " " + row.dataset.criterion);
        if (firstMissingRow < 0) firstMissingRow = k;
      }
    });
    return { missing: missing, firstMissingRow: firstMissingRow, body: {
      assignment_id: current.id, choice: choiceEl ? choiceEl.value : null, ratings: ratings,
      comment: $("comment").value, duration_ms: Date.now() - startedAt
    } };
  }

  function submit() {
    if (!current || busy) return;
    var c = collect();
    if (c.missing.length) {
      setStatus("Still missing: " + c.missing.join(", "), "error");
      if (c.firstMissingRow >= 0) setActive(c.firstMissingRow);
      return;
    }
    busy = true;
    setStatus("Saving…");
    api("/api/submit", { method: "POST", body: JSON.stringify(c.body) }).then(function (r) {
      busy = false;
      if (r.status === 201 || r.status === 409) {  // 409: already saved (e.g. from another tab)
        return loadNext();
      }
      setStatus("Not saved: " + (r.data.error || ("HTTP " + r.status)), "error");
    }).catch(function () {
      busy = false;
      setStatus("Network error: not saved. Press Enter to retry.", "error");
    });
  }

  function rate(value) {
    var input = rows[active].querySelector('input[value="' + value + '"]');
    input.checked = true;
    if (active < rows.length - 1) setActive(active + 1);
  }

  function choose(value) {
    document.querySelector('input[name="choice"][value="' + value + '"]').checked = true;
  }

  function scrollDoc(direction) {
    var d = $("document");
    d.scrollBy({ top: direction * d.clientHeight * 0.85 });
  }

  function toggleHelp() { $("help").hidden = !$("help").hidden; }

  document.addEventListener("keydown", function (ev) {
    if (ev.target && ev.target.id === "comment") {
      if (ev.key === "Escape") { ev.preventDefault(); ev.target.blur(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); ev.target.blur(); submit(); }
      return;  // everything else is typing
    }
    if (ev.ctrlKey || ev.altKey || ev.metaKey) return;  // keep browser shortcuts working
    var key = ev.key;
    var handled = true;
    if (key === "?") toggleHelp();
    else if (key === "Escape") $("help").hidden = true;
    else if (!current) handled = false;
    else if (/^[1-7]$/.test(key)) rate(key);
    else if (key === "a" || key === "A") choose("left");
    else if (key === "s" || key === "S") choose("tie");
    else if (key === "d" || key === "D") choose("right");
    else if (key === "j" || key === "J" || key === "ArrowDown") setActive(active + 1);
    else if (key === "k" || key === "K" || key === "ArrowUp") setActive(active - 1);
    else if (key === "PageDown" || (key === " " && !ev.shiftKey)) scrollDoc(1);
    else if (key === "PageUp" || (key === " " && ev.shiftKey)) scrollDoc(-1);
    else if (key === "c" || key === "C") $("comment").focus();
    else if (key === "Enter") submit();
    else handled = false;
    if (handled) ev.preventDefault();
  });

  // Mouse users: clicking a rating row makes it the highlighted one.
  rows.forEach(function (row, k) {
    row.addEventListener("click", function () { setActive(k); });
  });
  $("submit").addEventListener("click", submit);
  $("help-button").addEventListener("click", toggleHelp);

  loadNext();
})();
