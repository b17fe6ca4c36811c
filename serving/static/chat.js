/* Chat page: streams /v1/chat/completions, keeps the conversation (and the votes' state, read
 * back from the server) across reloads, puts the feedback widget under every answer. Compare
 * mode asks for n: 2, shows the two answers in random order and reveals which model version
 * produced each only once the pair has been voted on. */
(function () {
  "use strict";
  var STORE = "rlhf-ui-chat", KEY = "rlhf-ui-key", USER = "rlhf-ui-user";
  var $ = function (id) { return document.getElementById(id); };
  var state = load();
  var busy = false;

  function load() {
    try { return JSON.parse(localStorage.getItem(STORE)) || {turns: []}; }
    catch (e) { return {turns: []}; }
  }
  function save() { localStorage.setItem(STORE, JSON.stringify(state)); }
  function userId() {
    var u = localStorage.getItem(USER);
    if (!u) {
      var b = new Uint8Array(12);
      crypto.getRandomValues(b);
      u = "web-" + Array.prototype.map.call(b, function (x) { return ("0" + x.toString(16)).slice(-2); }).join("");
      localStorage.setItem(USER, u);
    }
    return u;
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function apiKey() { return $("api-key").value.trim(); }

  /* the messages sent for the next turn: each answered turn contributes its kept answer */
  function history() {
    var msgs = [];
    state.turns.forEach(function (t) {
      if (!t.done || t.error) return;
      msgs.push({role: "user", content: t.user});
      msgs.push({role: "assistant", content: t.answers[keptIndex(t)].text});
    });
    return msgs;
  }
  function keptIndex(t) {  // compare mode: the preferred answer continues the conversation
    if (t.answers.length < 2) return 0;
    var col = t.vote === "b" ? 1 : 0;
    return t.order[col];
  }

  function render() {
    var list = $("transcript");
    list.textContent = "";
    state.turns.forEach(function (t, i) { list.appendChild(renderTurn(t, i)); });
  }

  function renderTurn(t, i) {
    var li = el("li", {"class": "turn", "data-turn": String(i)});
    var u = el("div", {"class": "msg user"});
    u.appendChild(el("span", {"class": "who"}, "You"));
    u.appendChild(el("p", {"class": "text"}, t.user));
    li.appendChild(u);
    var wrap = el("div", {"class": t.answers.length > 1 ? "answers pair" : "answers"});
    var cols = t.answers.length > 1 ? t.order : [0];
    cols.forEach(function (idx, col) {
      var a = t.answers[idx];
      var box = el("article", {"class": "msg assistant", "data-col": String(col),
                               "aria-label": t.answers.length > 1 ? "Answer " + "AB"[col] : "Answer"});
      box.appendChild(el("span", {"class": "who"}, t.answers.length > 1 ? "Answer " + "AB"[col] : "Assistant"));
      var p = el("p", {"class": "text", "data-chunks": String(a.chunks || 0)}, a.text);
      box.appendChild(p);
      if (t.answers.length > 1) {
        var rev = el("p", {"class": "reveal"});
        rev.hidden = !t.revealed;
        if (t.revealed) rev.textContent = "Produced by " + a.version + " (sample " + (idx + 1) + " of 2)";
        box.appendChild(rev);
      } else if (t.done && !t.error) {
        var w = el("div", {"class": "widget"});
        box.appendChild(w);
        RLHFFeedback.thumbs(w, {responseId: a.response_id, token: a.token, baseUrl: location.origin,
                                label: "Rate answer " + (i + 1)});
        box.appendChild(el("p", {"class": "meta"}, "model " + a.version));
      }
      wrap.appendChild(box);
    });
    li.appendChild(wrap);
    if (t.answers.length > 1 && t.done && !t.error) {
      var cw = el("div", {"class": "widget compare-widget"});
      li.appendChild(cw);
      var ids = t.order.map(function (k) { return t.answers[k].response_id; });
      RLHFFeedback.compare(cw, {
        responseIds: ids, token: t.answers[0].token, baseUrl: location.origin,
        label: "Which answer to message " + (i + 1) + " is better?",
        onVote: function (v) { reveal(i, v.value); },
        onState: function (v) { reveal(i, v.value); }
      });
    }
    if (t.error) li.appendChild(el("p", {"class": "error", role: "alert"}, t.error));
    return li;
  }

  function reveal(i, choice) {
    var t = state.turns[i];
    t.vote = choice;
    t.revealed = true;
    save();
    var li = document.querySelector('li[data-turn="' + i + '"]');
    if (!li) return;
    var boxes = li.querySelectorAll("article.assistant");
    for (var c = 0; c < boxes.length; c++) {
      var idx = t.order[c], rev = boxes[c].querySelector(".reveal");
      rev.textContent = "Produced by " + t.answers[idx].version + " (sample " + (idx + 1) + " of 2)";
      rev.hidden = false;
    }
  }

  function fail(t, msg) {
    t.error = msg;
    t.done = true;
    save();
    render();
    $("chat-error").textContent = msg;
  }

  function errorText(status, body) {
    var m = body && body.error && body.error.message;
    if (status === 401) return "Refused: missing or wrong API key (401).";
    return "Request failed (" + status + ")" + (m ? ": " + m : "");
  }

  async function send(text) {
    if (busy) return;
    busy = true;
    $("send").disabled = true;
    $("chat-error").textContent = "";
    var n = $("compare").checked ? 2 : 1;
    var messages = history().concat([{role: "user", content: text}]);
    var order = [0, 1];
    if (n === 2) {
      var r = new Uint8Array(1);
      crypto.getRandomValues(r);
      if (r[0] & 1) order = [1, 0];
    }
    var t = {user: text, answers: [], order: order, done: false, revealed: false};
    for (var k = 0; k < n; k++) t.answers.push({text: "", chunks: 0});
    state.turns.push(t);
    var ti = state.turns.length - 1;
    render();
    var headers = {"Content-Type": "application/json"};
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    var body = {model: "policy", messages: messages, stream: true, n: n, user: userId()};
    var mt = parseInt($("max-tokens").value, 10);
    if (mt > 0) body.max_tokens = mt;
    try {
      var resp = await fetch("/v1/chat/completions", {method: "POST", headers: headers,
                                                      body: JSON.stringify(body)});
      if (!resp.ok) {
        var j = await resp.json().catch(function () { return null; });
        return fail(t, errorText(resp.status, j));
      }
      var reader = resp.body.getReader(), dec = new TextDecoder(), buf = "", finished = false;
      var li = document.querySelector('li[data-turn="' + ti + '"]');
      while (!finished) {
        var part = await reader.read();
        if (part.done) break;
        buf += dec.decode(part.value, {stream: true});
        var cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          var block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          var line = block.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
            .map(function (l) { return l.slice(5).trim(); }).join("");
          if (!line) continue;
          if (line === "[DONE]") { finished = true; break; }
          var chunk = JSON.parse(line);
          if (chunk.error) return fail(t, "Generation failed: " + chunk.error.message);
          (chunk.choices || []).forEach(function (c) {
            var a = t.answers[c.index];
            if (!a) return;
            a.response_id = c.response_id || a.response_id;
            if (c.feedback_token) a.token = c.feedback_token;
            a.version = chunk.model_version || a.version;
            var d = c.delta && c.delta.content;
            if (d) { a.text += d; a.chunks++; }
            if (c.finish_reason) a.finish = c.finish_reason;
            var col = n === 2 ? t.order.indexOf(c.index) : 0;
            var p = li && li.querySelector('article[data-col="' + col + '"] .text');
            if (p) { p.textContent = a.text; p.setAttribute("data-chunks", String(a.chunks)); }
          });
        }
      }
      if (!finished) return fail(t, "The stream ended early; try again.");
      t.done = true;  // the answers are stored before [DONE]: they can be rated now
      save();
      render();
    } catch (e) {
      fail(t, "Network error: " + e.message);
    } finally {
      busy = false;
      $("send").disabled = false;
    }
  }

  $("composer").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("message").value.trim();
    if (!text || busy) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("new-chat").addEventListener("click", function () {
    state = {turns: []};
    save();
    render();
    $("message").focus();
  });
  $("api-key").value = localStorage.getItem(KEY) || "";
  $("api-key").addEventListener("change", function () { localStorage.setItem(KEY, apiKey()); });
  $("compare").checked = localStorage.getItem("rlhf-ui-compare") === "1";
  $("compare").addEventListener("change", function () {
    localStorage.setItem("rlhf-ui-compare", $("compare").checked ? "1" : "0");
  });
  // an interrupted stream (reload mid-answer) cannot be resumed
  state.turns.forEach(function (t) { if (!t.done) { t.done = true; t.error = "Interrupted."; } });
  render();
  window.rlhfChat = {state: function () { return state; }};
})();
