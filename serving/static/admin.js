/* Operator console: reads /admin/status, /admin/versions, /admin/feedback-stats, /admin/deploys
 * with the admin token (kept in this tab's sessionStorage only), polls the pipeline live, deploys
 * and rolls back through confirmation dialogs, exports preference data. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var TOKEN = "rlhf-admin-token", OPERATOR = "rlhf-admin-operator";
  var token = sessionStorage.getItem(TOKEN) || "";
  var timer = null, slowTick = 0, versions = [], stats = {};

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmtTime(t) {
    if (!t) return "–";
    var d = new Date(Number(t) * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function pct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + "%"; }
  function num(x, d) { return typeof x === "number" ? x.toFixed(d === undefined ? 3 : d) : "–"; }

  async function api(path, opts) {
    opts = opts || {};
    var headers = {"Authorization": "Bearer " + token};
    if (opts.body) headers["Content-Type"] = "application/json";
    var r = await fetch(path, {method: opts.method || "GET", headers: headers,
                               body: opts.body ? JSON.stringify(opts.body) : undefined});
    if (opts.raw && r.ok) return r;
    var j = await r.json().catch(function () { return null; });
    if (!r.ok) {
      var msg = j && (j.detail || (j.error && j.error.message)) || r.statusText;
      var e = new Error(r.status === 401 ? "Wrong admin token (401)." :
                        r.status === 403 ? "Admin routes are disabled on this server (403): " + msg :
                        "Request failed (" + r.status + "): " + msg);
      e.status = r.status;
      throw e;
    }
    return j;
  }

  /* ---- rendering ------------------------------------------------------------------------- */
  function renderStatus(s) {
    $("current-version").textContent = s.current_version || "–";
    $("replicas").textContent = (s.replicas || []).map(function (r) {
      return r.replica + ": " + r.version + " (" + r.status + ")";
    }).join("; ") || "none alive";
    var c = (s.feedback || {}).counts || {};
    $("feedback-counts").textContent = (c.total || 0) + " distinct votes (" + (c.up || 0) + " 👍, " +
      (c.down || 0) + " 👎, " + (c.comparison || 0) + " comparisons); " +
      ((s.feedback || {}).not_yet_trained_on || 0) + " not yet trained on";
    var p = s.pipeline || {};
    $("pipe-run").textContent = p.run_id ? p.run_id + (p.reason ? " (" + p.reason + ")" : "") : "no run yet";
    $("pipe-state").textContent = p.state || "idle";
    $("pipe-state").setAttribute("data-state", p.state || "idle");
    var step = p.step ? p.step + (p.step_index ? " (" + p.step_index + "/" + p.steps + ")" : "") : "–";
    if (p.stage && p.state === "running") step += " · " + p.stage;
    $("pipe-step").textContent = step;
    var prog = $("pipe-progress");
    var total = Number(p.total) || 0, done = Number(p.progress) || 0;
    if (p.state === "running" && total > 0) { prog.max = total; prog.value = Math.min(done, total); }
    else if (p.state === "running") { prog.removeAttribute("value"); }
    else { prog.max = 1; prog.value = p.state ? 1 : 0; }
    var detail = [];
    if (p.state === "running" && total) detail.push(done + " / " + total);
    if (p.last_metrics && typeof p.last_metrics === "object") {
      Object.keys(p.last_metrics).slice(0, 4).forEach(function (k) {
        detail.push(k + " " + num(p.last_metrics[k]));
      });
    }
    if (p.error) detail.push(String(p.error).slice(0, 300));
    if (p.updated) detail.push("updated " + fmtTime(p.updated));
    $("pipe-detail").textContent = detail.join(" · ");
    var runs = $("runs");
    runs.textContent = "";
    (p.history || []).slice(0, 8).forEach(function (h) {
      var tr = el("tr", {"data-run": h.run_id});
      tr.appendChild(el("td", null, h.run_id));
      var out = el("td", {"class": h.state === "succeeded" ? "pass" : (h.state === "failed" || h.state === "rejected") ? "fail" : ""}, h.state);
      if (h.error) out.title = h.error;
      tr.appendChild(out);
      tr.appendChild(el("td", null, h.version || "–"));
      var took = h.finished && h.started ? Math.round(h.finished - h.started) + " s" : "–";
      tr.appendChild(el("td", null, took));
      runs.appendChild(tr);
    });
    if (!runs.children.length) {
      var tr = el("tr"); tr.appendChild(el("td", {colspan: "4", "class": "muted"}, "No run yet."));
      runs.appendChild(tr);
    }
  }

  function renderVersions() {
    var body = $("versions");
    body.textContent = "";
    versions.forEach(function (v) {
      var st = stats[v.version] || {};
      var tr = el("tr", {"data-version": v.version, "class": v.current ? "current" : ""});
      var name = el("td");
      name.appendChild(el("strong", null, v.version));
      if (v.current) name.appendChild(el("span", {"class": "muted"}, " (serving)"));
      tr.appendChild(name);
      tr.appendChild(el("td", null, v.parent || "–"));
      tr.appendChild(el("td", null, v.algorithm || (v.parent ? "?" : "base model")));
      tr.appendChild(el("td", null, fmtTime(v.created)));
      var gate = el("td");
      if (v.gate_passed === true) gate.appendChild(el("span", {"class": "pass"}, "passed"));
      else if (v.gate_passed === false) gate.appendChild(el("span", {"class": "fail"}, "refused"));
      else gate.appendChild(el("span", {"class": "muted"}, "not gated"));
      if ((v.gate_reasons || []).length) {
        var ul = el("ul", {"class": "reasons"});
        v.gate_reasons.forEach(function (r) { ul.appendChild(el("li", null, r)); });
        gate.appendChild(ul);
      }
      tr.appendChild(gate);
      tr.appendChild(el("td", null, num(v.kl_to_anchor)));
      var n = (st.up || 0) + (st.down || 0);
      tr.appendChild(el("td", {"class": "up-rate"}, pct(st.up_rate) + (n ? " (" + n + ")" : "")));
      var played = (st.wins || 0) + (st.losses || 0) + (st.ties || 0);
      tr.appendChild(el("td", {"class": "win-rate"}, pct(st.win_rate) + (played ? " (" + played + ")" : "")));
      var act = el("td");
      var b = el("button", {type: "button", "class": "secondary deploy", "data-version": v.version,
                            "aria-label": "Deploy " + v.version}, "Deploy…");
      b.disabled = !!v.current;
      b.addEventListener("click", function () { confirmDeploy(v); });
      act.appendChild(b);
      tr.appendChild(act);
      body.appendChild(tr);
    });
    renderCurve();
  }

  function renderCurve() {
    var W = 640, H = 220, L = 44, R = 16, T = 14, B = 34;
    var pts = versions.map(function (v) {
      var st = stats[v.version] || {};
      return {v: v.version, up: st.up_rate, win: st.win_rate, kl: v.kl_to_anchor};
    });
    var maxKl = Math.max.apply(null, pts.map(function (p) { return p.kl || 0; }).concat([1e-9]));
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    var desc = pts.map(function (p) {
      return p.v + ": thumbs-up " + pct(p.up) + ", win-rate " + pct(p.win) + ", KL " + num(p.kl);
    }).join("; ");
    svg.setAttribute("aria-label", "Learning curve by version. " + (desc || "No versions yet."));
    function add(tag, attrs, text) {
      var e = document.createElementNS(ns, tag);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      if (text) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    var x = function (i) { return L + (pts.length < 2 ? (W - L - R) / 2 : i * (W - L - R) / (pts.length - 1)); };
    var y = function (f) { return T + (1 - f) * (H - T - B); };
    [0, .25, .5, .75, 1].forEach(function (f) {
      add("line", {x1: L, x2: W - R, y1: y(f), y2: y(f), stroke: "#d8dee4"});
      add("text", {x: L - 6, y: y(f) + 4, "text-anchor": "end", "font-size": "11", fill: "#3d444d"}, Math.round(f * 100) + "%");
    });
    pts.forEach(function (p, i) {
      add("text", {x: x(i), y: H - 12, "text-anchor": "middle", "font-size": "12", fill: "#1f2328"}, p.v);
    });
    [["up", "#0b5cad", 1], ["win", "#b35900", 1], ["kl", "#5a5a5a", maxKl]].forEach(function (s) {
      var d = "", key = s[0];
      pts.forEach(function (p, i) {
        if (typeof p[key] !== "number" || (key === "kl" && maxKl <= 1e-6)) return;
        var yy = y(Math.max(0, Math.min(1, p[key] / s[2])));
        d += (d ? " L" : "M") + x(i) + " " + yy;
        add("circle", {cx: x(i), cy: yy, r: 4, fill: s[1]});
      });
      if (d) add("path", {d: d, fill: "none", stroke: s[1], "stroke-width": 2});
    });
    var box = $("curve");
    box.textContent = "";
    box.appendChild(svg);
  }

  function renderDeploys(list) {
    var body = $("deploys");
    body.textContent = "";
    list.slice(0, 10).forEach(function (d) {
      var tr = el("tr");
      tr.appendChild(el("td", null, fmtTime(d.time)));
      tr.appendChild(el("td", null, d.version));
      tr.appendChild(el("td", null, d.previous || "–"));
      tr.appendChild(el("td", {"class": "who"}, d.actor || "–"));
      tr.appendChild(el("td", null, d.reason || "–"));
      body.appendChild(tr);
    });
  }

  /* ---- loading --------------------------------------------------------------------------- */
  async function refresh(all) {
    try {
      var s = await api("/admin/status");
      renderStatus(s);
      if (all) {
        var res = await Promise.all([api("/admin/versions"), api("/admin/feedback-stats"),
                                     api("/admin/deploys")]);
        versions = res[0].versions || [];
        stats = res[1].versions || {};
        renderVersions();
        renderDeploys(res[2].deploys || []);
      }
      $("console-error").textContent = "";
    } catch (e) {
      $("console-error").textContent = e.message;
      if (e.status === 401 || e.status === 403) signOut(e.message);
    }
  }
  function tick() {
    slowTick = (slowTick + 1) % 3;
    refresh(slowTick === 0);
  }
  function signOut(msg) {
    if (timer) clearInterval(timer);
    timer = null;
    sessionStorage.removeItem(TOKEN);
    $("console").classList.add("hidden");
    $("login").classList.remove("hidden");
    $("login-error").textContent = msg || "";
  }
  async function signIn() {
    try {
      await api("/admin/status");
    } catch (e) {
      signOut(e.message);
      return;
    }
    sessionStorage.setItem(TOKEN, token);
    $("login").classList.add("hidden");
    $("console").classList.remove("hidden");
    $("login-error").textContent = "";
    await refresh(true);
    if (!timer) timer = setInterval(tick, 1500);
  }

  /* ---- actions --------------------------------------------------------------------------- */
  var pending = null;
  function ask(title, text, opts) {
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    $("confirm-reason-row").classList.toggle("hidden", !opts.reason);
    $("confirm-force").checked = false;
    $("confirm-force-row").classList.toggle("hidden", !opts.force);
    $("confirm-ok").textContent = opts.ok || "Confirm";
    pending = opts.run;
    $("confirm").showModal();
    (opts.reason ? $("confirm-reason") : $("confirm-cancel")).focus();
  }
  $("confirm-cancel").addEventListener("click", function () { pending = null; $("confirm").close(); });
  $("confirm-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var run = pending;
    pending = null;
    var reason = $("confirm-reason").value.trim(), force = $("confirm-force").checked;
    $("confirm").close();
    if (run) run(reason, force);
  });
  async function act(what, fn) {
    $("action-status").textContent = what + "…";
    try {
      var res = await fn();
      $("action-status").textContent = what + ": done" + (res && res.version ? " (now " + res.version + ")" : "") + ".";
    } catch (e) {
      $("action-status").textContent = what + " failed: " + e.message;
    }
    await refresh(true);
  }
  function operator() { return $("operator").value.trim(); }
  function confirmDeploy(v) {
    ask("Deploy " + v.version + "?",
        "Every replica will hot-swap to " + v.version + " (now serving " + ($("current-version").textContent) + ").",
        {reason: true, force: v.gate_passed === false, ok: "Deploy " + v.version,
         run: function (reason, force) {
           act("Deploy " + v.version, function () {
             return api("/admin/console/deploy", {method: "POST", body: {
               version: v.version, reason: reason, operator: operator(), force: force}});
           });
         }});
  }
  $("rollback").addEventListener("click", function () {
    ask("Roll back?", "Serve the version that was served before " + $("current-version").textContent + " again.",
        {ok: "Roll back", run: function () {
          act("Rollback", function () {
            return api("/admin/console/rollback", {method: "POST", body: {operator: operator()}});
          });
        }});
  });
  $("retrain").addEventListener("click", function () {
    ask("Retrain now?", "Queue one pipeline run on the feedback collected so far.",
        {ok: "Retrain", run: function () {
          act("Retrain", function () { return api("/admin/retrain", {method: "POST"}); });
        }});
  });
  $("export").addEventListener("click", async function () {
    var q = new URLSearchParams({format: $("exp-format").value});
    if ($("exp-since").value.trim()) q.set("since", $("exp-since").value.trim());
    if ($("exp-version").value.trim()) q.set("version", $("exp-version").value.trim());
    $("action-status").textContent = "Exporting…";
    try {
      var r = await api("/admin/export?" + q.toString(), {raw: true});
      var blob = await r.blob();
      var a = el("a", {href: URL.createObjectURL(blob),
                       download: "preferences-" + $("exp-format").value + ".jsonl"});
      document.body.appendChild(a);
      a.click();
      a.remove();
      $("action-status").textContent = "Export downloaded.";
    } catch (e) {
      $("action-status").textContent = "Export failed: " + e.message;
    }
  });

  $("login").addEventListener("submit", function (ev) {
    ev.preventDefault();
    token = $("admin-token").value.trim();
    localStorage.setItem(OPERATOR, operator());
    signIn();
  });
  $("operator").value = localStorage.getItem(OPERATOR) || "";
  if (token) signIn();
})();
