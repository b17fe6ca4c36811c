/* rlhf-live feedback widget: 👍/👎 (+ optional reason and comment) and A / B / tie / both-bad.
 * No dependencies. Embed:
 *   <script src="https://API/ui/feedback.js"></script>
 *   <div data-rlhf-response-id="resp_…" data-rlhf-token="ft1.…"></div>             (thumbs)
 *   <div data-rlhf-response-ids="resp_a,resp_a_1" data-rlhf-token="ft1.…"></div>   (pair)
 * or from script: RLHFFeedback.thumbs(el, {responseId, token}) / RLHFFeedback.compare(el,
 * {responseIds: [a, b], token}). Options: baseUrl (default: where this script came from),
 * apiKey (only for pages whose back end holds one; tokens need none), onVote(vote), onState(vote).
 * Cross-origin pages need their origin in the server's RLHF_UI_CORS_ORIGINS.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var DEFAULT_BASE = script && script.src ? new URL(script.src, location.href).origin : "";
  var REASONS = [["", "No reason"], ["incorrect", "Incorrect"], ["unhelpful", "Not helpful"],
                 ["off_topic", "Off topic"], ["too_long", "Too long"], ["too_short", "Too short"],
                 ["unsafe", "Unsafe or offensive"], ["other", "Other"]];
  var CHOICES = [["a", "A is better"], ["b", "B is better"], ["tie", "Tie"], ["both_bad", "Both bad"]];
  var seq = 0;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    }
    if (text) e.textContent = text;
    return e;
  }

  function ensureCss(base) {
    if (document.querySelector("link[data-rlhf-css]")) return;
    var link = el("link", {rel: "stylesheet", href: base + "/ui/feedback.css", "data-rlhf-css": "1"});
    document.head.appendChild(link);
  }

  function hash(text) {  // short, stable: only to tell idempotency keys of different bodies apart
    var h = 2166136261;
    for (var i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0).toString(36);
  }

  function describe(status, body) {
    var msg = body && body.error && body.error.message ? body.error.message : "";
    if (status === 401) return "Refused: this vote link is invalid or expired (401).";
    if (status === 403) return "Refused: not allowed to rate this answer (403).";
    if (status === 429) return "Too many votes, try again shortly (429).";
    if (status === 503) return "Feedback is unavailable right now, try again (503).";
    return "Could not record the vote (" + (status || "network error") + ")" + (msg ? ": " + msg : ".");
  }

  function Client(opts) {
    this.base = (opts.baseUrl || DEFAULT_BASE).replace(/\/$/, "");
    this.apiKey = opts.apiKey || null;
    this.token = opts.token;
  }
  Client.prototype.post = function (path, body, idem) {
    var headers = {"Content-Type": "application/json"};
    if (idem) headers["Idempotency-Key"] = idem;
    if (this.apiKey) headers["Authorization"] = "Bearer " + this.apiKey;
    return fetch(this.base + path, {method: "POST", headers: headers, body: JSON.stringify(body),
                                    credentials: "omit"})
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (j) {
          if (!r.ok) { var e = new Error(describe(r.status, j)); e.status = r.status; throw e; }
          return j;
        });
      }, function () { var e = new Error(describe(0)); e.status = 0; throw e; });
  };
  Client.prototype.state = function (targets) {
    if (!this.token) return Promise.resolve({votes: {}});
    return this.post("/ui/api/vote-state", {feedback_token: this.token, targets: targets});
  };

  function Base(root, opts, label) {
    this.root = root;
    this.opts = opts;
    this.client = new Client(opts);
    this.busy = false;
    this.recorded = null;  // the vote the server has for us: {event_id, ...}
    ensureCss(this.client.base);
    root.classList.add("rlhf-fb");
    root.textContent = "";
    this.group = el("div", {role: "group", "aria-label": label, "class": "rlhf-fb-group"});
    this.status = el("span", {"class": "rlhf-fb-status", role: "status", "aria-live": "polite"});
    root.appendChild(this.group);
    root.appendChild(this.status);
    this.id = "rlhf" + (++seq);
  }
  Base.prototype.button = function (value, text, aria) {
    var b = el("button", {type: "button", "class": "rlhf-fb-btn", "data-value": value,
                          "aria-pressed": "false", "aria-label": aria || null}, text);
    var self = this;
    b.addEventListener("click", function (ev) { ev.preventDefault(); self.vote(value); });
    this.group.appendChild(b);
    return b;
  };
  Base.prototype.mark = function (value) {
    var bs = this.group.querySelectorAll("button[data-value]");
    for (var i = 0; i < bs.length; i++) {
      bs[i].setAttribute("aria-pressed", bs[i].getAttribute("data-value") === value ? "true" : "false");
    }
  };
  Base.prototype.say = function (text, error) {
    this.status.textContent = text;
    this.root.classList.toggle("rlhf-fb-error", !!error);
    this.status.setAttribute("role", error ? "alert" : "status");
  };
  Base.prototype.send = function (path, body, value, keyPart) {
    // One vote per click, however often it is clicked: clicks while a post is in flight are
    // dropped, and the Idempotency-Key (the same for the same vote on the same recorded state)
    // makes any repeat a server-side duplicate. A different vote later is a new key (latest wins).
    if (this.busy) return Promise.resolve(null);
    if (this.recorded && this.recorded.value === value && keyPart === value) {
      this.say(this.recordedText(value));  // already recorded: pressing it again changes nothing
      return Promise.resolve(null);
    }
    this.busy = true;
    this.root.setAttribute("aria-busy", "true");
    var after = this.recorded ? this.recorded.event_id : "none";
    var idem = "w1:" + hash(JSON.stringify(body)) + ":" + keyPart + ":after:" + after;
    var self = this;
    this.say("Sending…");
    return this.client.post(path, body, idem).then(function (res) {
      self.recorded = {event_id: res.event_id, value: value, duplicate: res.duplicate};
      self.mark(value);
      self.root.setAttribute("data-recorded", value);
      self.say(self.recordedText(value));
      if (self.opts.onVote) self.opts.onVote({value: value, event: res});
      return res;
    }, function (err) {
      self.say(err.message, true);
      if (self.opts.onError) self.opts.onError(err);
      return null;
    }).then(function (res) {
      self.busy = false;
      self.root.removeAttribute("aria-busy");
      return res;
    });
  };

  /* ---- thumbs ---------------------------------------------------------------------------- */
  function Thumbs(root, opts) {
    Base.call(this, root, opts, opts.label || "Rate this answer");
    this.rid = opts.responseId;
    this.up = this.button("up", "👍", "Good answer");
    this.down = this.button("down", "👎", "Bad answer");
    var more = el("details", {"class": "rlhf-fb-more"});
    more.appendChild(el("summary", null, "Add a reason or comment"));
    var reasonId = this.id + "-reason", commentId = this.id + "-comment";
    var row = el("div", {"class": "rlhf-fb-row"});
    row.appendChild(el("label", {"for": reasonId}, "Reason"));
    this.reason = el("select", {id: reasonId});
    REASONS.forEach(function (r) { this.reason.appendChild(el("option", {value: r[0]}, r[1])); }, this);
    row.appendChild(this.reason);
    more.appendChild(row);
    row = el("div", {"class": "rlhf-fb-row"});
    row.appendChild(el("label", {"for": commentId}, "Comment"));
    this.comment = el("textarea", {id: commentId, rows: "2", maxlength: "2000"});
    row.appendChild(this.comment);
    more.appendChild(row);
    var sendBtn = el("button", {type: "button", "class": "rlhf-fb-send"}, "Send with comment");
    var self = this;
    sendBtn.addEventListener("click", function () {
      var rating = self.recorded ? self.recorded.value : null;
      if (!rating) { self.say("Choose 👍 or 👎 first.", true); return; }
      self.vote(rating, true);
    });
    more.appendChild(sendBtn);
    root.appendChild(more);
    this.more = more;
    this.load();
  }
  Thumbs.prototype = Object.create(Base.prototype);
  Thumbs.prototype.recordedText = function (v) {
    return "Recorded: " + (v === "up" ? "👍 good answer" : "👎 bad answer") + ". Thank you.";
  };
  Thumbs.prototype.vote = function (rating, withComment) {
    var body = {response_id: this.rid, rating: rating};
    if (this.client.token) body.feedback_token = this.client.token;
    if (withComment) {
      var parts = [];
      if (this.reason.value) parts.push("reason: " + this.reason.value);
      if (this.comment.value.trim()) parts.push(this.comment.value.trim());
      if (parts.length) body.comment = parts.join("; ").slice(0, 4000);
    }
    return this.send("/v1/feedback", body, rating, rating + (withComment ? ":c" : ""));
  };
  Thumbs.prototype.load = function () {
    var self = this;
    this.client.state([this.rid]).then(function (res) {
      var v = res.votes && res.votes[self.rid];
      if (v && v.rating && !self.recorded) {
        self.recorded = {event_id: v.event_id, value: v.rating};
        self.mark(v.rating);
        self.root.setAttribute("data-recorded", v.rating);
        self.say(self.recordedText(v.rating));
        if (self.opts.onState) self.opts.onState({value: v.rating, event: v});
      }
    }, function (err) { if (err.status === 401) self.say(err.message, true); });
  };

  /* ---- pair ------------------------------------------------------------------------------ */
  function Compare(root, opts) {
    Base.call(this, root, opts, opts.label || "Which answer is better?");
    this.ids = opts.responseIds;
    var labels = opts.choiceLabels || {};
    CHOICES.forEach(function (c) { this.button(c[0], labels[c[0]] || c[1]); }, this);
    this.load();
  }
  Compare.prototype = Object.create(Base.prototype);
  Compare.prototype.recordedText = function (v) {
    var names = {a: "A is better", b: "B is better", tie: "a tie", both_bad: "both bad"};
    return "Recorded: " + names[v] + ". Thank you.";
  };
  Compare.prototype.vote = function (choice) {
    var body = {response_ids: this.ids, choice: choice};
    if (this.client.token) body.feedback_token = this.client.token;
    return this.send("/v1/comparisons", body, choice, choice);
  };
  Compare.prototype.load = function () {
    var self = this, fwd = this.ids.join("|"), rev = [this.ids[1], this.ids[0]].join("|");
    this.client.state([fwd, rev]).then(function (res) {
      var f = res.votes && res.votes[fwd], r = res.votes && res.votes[rev], v = null;
      if (f && (!r || (f.created || 0) >= (r.created || 0))) v = f;
      else if (r) v = Object.assign({}, r, {choice: {a: "b", b: "a"}[r.choice] || r.choice});
      if (v && v.choice && !self.recorded) {
        self.recorded = {event_id: v.event_id, value: v.choice};
        self.mark(v.choice);
        self.root.setAttribute("data-recorded", v.choice);
        self.say(self.recordedText(v.choice));
        if (self.opts.onState) self.opts.onState({value: v.choice, event: v});
      }
    }, function (err) { if (err.status === 401) self.say(err.message, true); });
  };

  function autoInit(scope) {
    var nodes = (scope || document).querySelectorAll("[data-rlhf-response-id],[data-rlhf-response-ids]");
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      if (n.getAttribute("data-rlhf-ready")) continue;
      n.setAttribute("data-rlhf-ready", "1");
      var opts = {token: n.getAttribute("data-rlhf-token") || null,
                  baseUrl: n.getAttribute("data-rlhf-base-url") || undefined};
      if (n.hasAttribute("data-rlhf-response-ids")) {
        opts.responseIds = n.getAttribute("data-rlhf-response-ids").split(",");
        new Compare(n, opts);
      } else {
        opts.responseId = n.getAttribute("data-rlhf-response-id");
        new Thumbs(n, opts);
      }
    }
  }

  window.RLHFFeedback = {
    thumbs: function (root, opts) { return new Thumbs(root, opts); },
    compare: function (root, opts) { return new Compare(root, opts); },
    autoInit: autoInit
  };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { autoInit(); });
  } else {
    autoInit();
  }
})();
