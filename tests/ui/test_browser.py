"""The browser surfaces in a real headless browser (Playwright driving Debian's Chromium) against
real processes: a private Redis, `rlhf serve` on the tiny model (vLLM) and `rlhf worker` (a real
Celery worker that runs the pipeline when the console's "Retrain now" is pressed).

One server + worker for the module (an engine start costs ~25 s of CPU); each test opens a fresh
browser context (its own localStorage). Set RLHF_UI_SCREENSHOTS=docs to (re)write the README's
screenshots.
"""
from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis

from common.keys import KEYS
from demo.stack import Stack, free_port

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
API_KEY = "ui-key"
ADMIN = "ui-admin-secret"
SHOTS = os.environ.get("RLHF_UI_SCREENSHOTS")
T = 60_000  # ms: generous waits, the 2-core machine is shared


@pytest.fixture(scope="module")
def embed_site():
    """A second origin (another port on 127.0.0.1) that embeds the widget cross-origin."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "not found").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{srv.server_port}", "pages": pages}
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def stack(redis_server, tiny_model_dir, tmp_path_factory, embed_site):
    # Its own key prefix: the session's serving fixture (tests/serving/conftest.py) shares this
    # redis-server and keeps heartbeating as a replica under the default prefix, so a deploy
    # here would wait for a replica that never has our versions. KEYS reads the prefix on use,
    # so this process's KEYS and the stack's processes agree.
    saved_prefix = os.environ.get("RLHF_KEY_PREFIX")
    os.environ["RLHF_KEY_PREFIX"] = f"uitest{os.getpid()}"
    data = tmp_path_factory.mktemp("ui") / "data"
    port = free_port()
    env = {
        **os.environ,
        "RLHF_REDIS_URL": redis_server.url, "RLHF_DATA_DIR": str(data), "RLHF_ADMIN_TOKEN": ADMIN,
        "RLHF_API_KEYS": API_KEY, "RLHF_TRUSTED_API_KEYS": API_KEY,
        "RLHF_USER_HMAC_KEY": "ui-test-hmac", "RLHF_UI_CORS_ORIGINS": embed_site["url"],
        "RLHF_MAX_MODEL_LEN": "256", "RLHF_MAX_NUM_SEQS": "8", "VLLM_CPU_KVCACHE_SPACE": "1",
        # the pipeline: DPO, tiny settings, gate opened wide (this checks the machinery)
        "RLHF_ALGORITHM": "dpo",
        "RLHF_ALGORITHM_OVERRIDES": json.dumps({"epochs": 1, "batch_size": 4, "micro_batch_size": 4}),
        "RLHF_RM_OVERRIDES": json.dumps({"epochs": 1, "batch_size": 4, "show_progress_bar": False}),
        "RLHF_KL_BUDGET": "1e9", "RLHF_GATE_MAX_PREF_DROP": "1", "RLHF_GATE_MAX_DEGENERATE": "1000",
        "RLHF_GATE_MIN_RM_ACCURACY": "-1", "RLHF_GATE_MIN_RM_GAIN": "-1e9", "RLHF_GATE_MAX_KL": "1e9",
        "RLHF_GATE_EVAL_PROMPTS": "4", "RLHF_GATE_MAX_NEW_TOKENS": "8",
        "RLHF_RETRAIN_MIN_EVENTS": "100000", "RLHF_TORCH_THREADS": "1",
        "RLHF_RATE_LIMIT_FEEDBACK_RATER": "", "RLHF_RATE_LIMIT_GENERATION_USER": "",
    }
    st = Stack(tmp_path_factory.mktemp("ui-logs"), env)
    try:
        st.rlhf("server", "serve", "--model", str(tiny_model_dir), "--port", str(port),
                "--log-level", "info")
        st.rlhf("worker", "worker", "--loglevel", "info")
        st.wait_http(f"http://127.0.0.1:{port}/health", timeout=300, what="server")
        yield {"url": f"http://127.0.0.1:{port}", "redis": redis.Redis.from_url(
            redis_server.url, decode_responses=True), "stack": st, "logs": st.log_dir}
    finally:
        st.stop()
        r = redis.Redis.from_url(redis_server.url)
        for key in r.scan_iter(match=f"{os.environ['RLHF_KEY_PREFIX']}*", count=1000):
            r.delete(key)
        if saved_prefix is None:
            os.environ.pop("RLHF_KEY_PREFIX", None)
        else:
            os.environ["RLHF_KEY_PREFIX"] = saved_prefix


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(T)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _open_chat(page, stack, key=API_KEY, compare=False, max_tokens=12):
    page.goto(stack["url"] + "/ui")
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    page.fill("#max-tokens", str(max_tokens))
    if compare:
        page.check("#compare")


def _say(page, text: str, turn: int, widget=".widget"):
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.wait_for_selector(f'li[data-turn="{turn}"] {widget}')


def _turn(page, i: int) -> dict:
    return page.evaluate(f"window.rlhfChat.state().turns[{i}]")


def _votes(r, target: str) -> list[dict]:
    out = []
    for key in r.scan_iter(match=f"{KEYS.prefix}:vote:*"):
        if key.endswith(":" + target):
            rec = json.loads(r.get(key))
            out.append(json.loads(rec["event"]))
    return out


def _stream_events(r, target: str) -> list[dict]:
    evs = [json.loads(f["event"]) for _, f in r.xrange(KEYS.feedback_stream)]
    return [e for e in evs if e["target"] == target]


def _long_answers(page) -> None:
    """The chat page's requests also ask for `ignore_eos`: the tiny random model may end an answer
    after a token or two, and vLLM merges the deltas a lagging reader has not taken yet, so a
    short answer can arrive as one SSE event (seen once in a full run) although it streamed."""
    def add_ignore_eos(route):
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))
    page.route("**/v1/chat/completions", add_ignore_eos)


def test_chat_streams_multi_turn(page, stack):
    _long_answers(page)
    _open_chat(page, stack, max_tokens=48)
    _say(page, "Hello there", 0)
    first = _turn(page, 0)
    assert first["answers"][0]["chunks"] >= 2, "the answer arrived as one piece, not streamed"
    chunks = int(page.get_attribute('li[data-turn="0"] article .text', "data-chunks"))
    assert chunks == first["answers"][0]["chunks"]
    assert page.inner_text('li[data-turn="0"] article .text') == first["answers"][0]["text"]
    _say(page, "And a second question", 1)
    second = _turn(page, 1)
    stored = json.loads(stack["redis"].get(KEYS.answer(second["answers"][0]["response_id"])))
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user"]
    assert stored["messages"][1]["content"] == first["answers"][0]["text"]
    assert stored["user"].startswith("u_")  # the page's user id, stored only as a pseudonym


def test_double_click_records_one_vote_that_survives_reload(page, stack):
    r = stack["redis"]
    _open_chat(page, stack)
    _say(page, "Rate me", 0)
    rid = _turn(page, 0)["answers"][0]["response_id"]
    up = page.locator('li[data-turn="0"] button[data-value="up"]')
    up.dblclick()
    page.wait_for_selector('li[data-turn="0"] .rlhf-fb[data-recorded="up"]')
    up.click()  # pressing the recorded vote again changes nothing
    time.sleep(1.0)
    assert len(_stream_events(r, rid)) == 1
    assert [v["rating"] for v in _votes(r, rid)] == ["up"]
    page.reload()
    page.wait_for_selector('li[data-turn="0"] .rlhf-fb[data-recorded="up"]')
    assert up.get_attribute("aria-pressed") == "true"
    assert "Recorded" in page.inner_text('li[data-turn="0"] .rlhf-fb-status')
    # a changed mind is a new vote (the latest wins), with a reason and a comment
    page.click('li[data-turn="0"] button[data-value="down"]')
    page.wait_for_selector('li[data-turn="0"] .rlhf-fb[data-recorded="down"]')
    page.click('li[data-turn="0"] summary')
    page.select_option('li[data-turn="0"] select', "too_short")
    page.fill('li[data-turn="0"] textarea', "needs more detail")
    page.click('li[data-turn="0"] .rlhf-fb-send')
    page.wait_for_function(
        "() => document.querySelector('li[data-turn=\"0\"] .rlhf-fb-status').textContent.includes('Recorded')"
        " && !document.querySelector('li[data-turn=\"0\"] .rlhf-fb').hasAttribute('aria-busy')")
    deadline = time.time() + 10
    while len(_stream_events(r, rid)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    evs = _stream_events(r, rid)
    assert [e["rating"] for e in evs] == ["up", "down", "down"]
    assert evs[-1]["comment"] == "reason: too_short; needs more detail"
    assert [v["rating"] for v in _votes(r, rid)] == ["down"]


def test_compare_tie_and_both_bad_reveal_after_vote(page, stack):
    r = stack["redis"]
    _open_chat(page, stack, compare=True)
    orders = set()
    for turn, (choice, label) in enumerate([("tie", "Tie"), ("both_bad", "Both bad")]):
        _say(page, f"Compare question {turn}", turn, ".compare-widget")
        t = _turn(page, turn)
        li = page.locator(f'li[data-turn="{turn}"]')
        texts = [li.locator(f'article[data-col="{c}"] .text').inner_text() for c in (0, 1)]
        assert texts == [t["answers"][t["order"][c]]["text"] for c in (0, 1)]
        assert li.locator(".reveal").first.is_hidden() and li.locator(".reveal").nth(1).is_hidden()
        assert "Produced by" not in li.inner_text()
        li.get_by_role("button", name=label).click()
        page.wait_for_selector(f'li[data-turn="{turn}"] .rlhf-fb[data-recorded="{choice}"]')
        assert li.locator(".reveal").first.is_visible()
        assert "Produced by v0" in li.inner_text()
        shown = [t["answers"][k]["response_id"] for k in t["order"]]
        votes = _votes(r, "|".join(shown))
        assert [v["choice"] for v in votes] == [choice], votes
        assert votes[0]["response_ids"] == shown  # A and B as displayed
        orders.add(tuple(t["order"]))
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "ui-chat-compare.png"), full_page=True)
    page.reload()  # the reveal stays (the vote is read back from the server)
    page.wait_for_selector('li[data-turn="1"] .rlhf-fb[data-recorded="both_bad"]')
    assert page.locator('li[data-turn="0"] .reveal').first.is_visible()


def _tab_to(page, selector: str, limit: int = 60) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement && document.activeElement.matches({json.dumps(selector)})"):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_keyboard_only_voting(page, stack):
    r = stack["redis"]
    page.goto(stack["url"] + "/ui")
    _tab_to(page, "#api-key")
    page.keyboard.type(API_KEY)
    _tab_to(page, "#max-tokens")
    page.keyboard.press("Control+A")
    page.keyboard.type("12")
    _tab_to(page, "#message")
    page.keyboard.type("Keyboard only")
    page.keyboard.press("Enter")
    page.wait_for_selector('li[data-turn="0"] .widget')
    rid = _turn(page, 0)["answers"][0]["response_id"]
    _tab_to(page, 'li[data-turn="0"] button[data-value="down"]')
    page.keyboard.press("Enter")
    page.wait_for_selector('li[data-turn="0"] .rlhf-fb[data-recorded="down"]')
    # compare mode by keyboard: Space on the checkbox, Space on "B is better"
    _tab_to(page, "#compare")
    page.keyboard.press("Space")
    _tab_to(page, "#message")
    page.keyboard.type("Two answers please")
    page.keyboard.press("Enter")
    page.wait_for_selector('li[data-turn="1"] .compare-widget')
    _tab_to(page, 'li[data-turn="1"] button[data-value="b"]')
    page.keyboard.press("Space")
    page.wait_for_selector('li[data-turn="1"] .rlhf-fb[data-recorded="b"]')
    assert [v["rating"] for v in _votes(r, rid)] == ["down"]
    t = _turn(page, 1)
    shown = [t["answers"][k]["response_id"] for k in t["order"]]
    assert [v["choice"] for v in _votes(r, "|".join(shown))] == ["b"]


def test_cross_origin_widget_forged_token_and_wrong_key(page, stack, embed_site):
    r = stack["redis"]
    resp = httpx.post(stack["url"] + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "policy", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 8, "n": 2, "user": "embedded-user"}).json()
    a, b = resp["choices"]
    token = a["feedback_token"]
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{'A' * len(sig)}"
    embed_site["pages"]["/shop.html"] = f"""<!doctype html><html lang="en"><head>
      <title>shop</title></head><body><main>
      <div id="ok" data-rlhf-response-id="{a['response_id']}" data-rlhf-token="{token}"></div>
      <div id="pair" data-rlhf-response-ids="{a['response_id']},{b['response_id']}"
           data-rlhf-token="{token}"></div>
      <div id="forged" data-rlhf-response-id="{b['response_id']}" data-rlhf-token="{forged}"></div>
      </main><script src="{stack['url']}/ui/feedback.js"></script></body></html>"""
    page.goto(embed_site["url"] + "/shop.html")
    page.click("#ok button[data-value=up]")
    page.wait_for_selector('#ok[data-recorded="up"]')
    page.click("#pair button[data-value=a]")
    page.wait_for_selector('#pair[data-recorded="a"]')
    page.click("#forged button[data-value=down]")
    page.wait_for_selector("#forged.rlhf-fb-error")
    assert "401" in page.inner_text("#forged .rlhf-fb-status")
    assert not page.locator("#forged").get_attribute("data-recorded")
    assert [v["rating"] for v in _votes(r, a["response_id"])] == ["up"]
    assert _votes(r, b["response_id"]) == []
    # no CORS for the admin routes, even from the allowed origin
    pre = httpx.options(stack["url"] + "/admin/status", headers={
        "Origin": embed_site["url"], "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers
    ok = httpx.options(stack["url"] + "/v1/feedback", headers={
        "Origin": embed_site["url"], "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,idempotency-key"})
    assert ok.headers.get("access-control-allow-origin") == embed_site["url"]
    # a wrong API key on the chat page: refused, shown to the user, nothing stored
    _open_chat(page, stack, key="not-the-key")
    page.fill("#message", "hello?")
    page.press("#message", "Enter")
    page.wait_for_selector('li[data-turn="0"] .error')
    assert "401" in page.inner_text('li[data-turn="0"] .error')


def _served(stack) -> str:
    return httpx.get(stack["url"] + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"},
                     timeout=30).json()["data"][0]["version"]


def _wait_served(stack, version: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _served(stack) == version:
            return
        stack["stack"].check_alive()
        time.sleep(0.5)
    raise AssertionError(f"{version} not served after {timeout}s (serving {_served(stack)})")


def _seed_pairs(stack, n: int = 16) -> None:
    """Real answers + comparisons through the API (tokens, distinct users)."""
    for i in range(n):
        res = httpx.post(stack["url"] + "/v1/chat/completions", timeout=120,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "policy", "messages": [{"role": "user", "content": f"Topic {i}?"}],
                               "max_tokens": 10, "n": 2, "user": f"seed{i % 6}"}).json()
        a, b = res["choices"]
        choice = "a" if len(a["message"]["content"]) <= len(b["message"]["content"]) else "b"
        fb = httpx.post(stack["url"] + "/v1/comparisons", timeout=30, json={
            "response_ids": [a["response_id"], b["response_id"]], "choice": choice,
            "feedback_token": a["feedback_token"]})
        assert fb.status_code == 200, fb.text


def _confirm(page, name: str, reason: str | None = None) -> None:
    dialog = page.locator("dialog#confirm")
    dialog.wait_for(state="visible")
    if reason is not None:
        page.fill("#confirm-reason", reason)
    dialog.get_by_role("button", name=name).click()
    dialog.wait_for(state="hidden")


def _console(page, stack, token=ADMIN):
    page.goto(stack["url"] + "/ui/admin")
    page.fill("#admin-token", token)
    page.fill("#operator", "alice")
    page.click("#login button[type=submit]")


def test_console_pipeline_deploy_rollback(page, stack):
    _console(page, stack, token="wrong")
    page.wait_for_selector("#login-error:has-text('401')")
    assert page.locator("#console").is_hidden()
    _seed_pairs(stack)
    _console(page, stack)
    page.wait_for_selector('#versions tr[data-version="v0"]')
    assert "(serving)" in page.inner_text('#versions tr[data-version="v0"]')
    page.click("#retrain")
    _confirm(page, "Retrain")
    # the running pipeline, live: some step (n/7) shows while it runs
    page.wait_for_function("() => document.getElementById('pipe-state').dataset.state === 'running'"
                           " && /\\(\\d\\/7\\)/.test(document.getElementById('pipe-step').textContent)",
                           timeout=120_000)
    seen_step = page.inner_text("#pipe-step")
    page.wait_for_selector("#runs tr[data-run] td.pass", timeout=900_000)
    run = page.locator("#runs tr[data-run]").first
    assert run.locator("td").nth(1).inner_text() == "succeeded", run.inner_text()
    assert run.locator("td").nth(2).inner_text() == "v1"
    assert seen_step
    _wait_served(stack, "v1")
    page.wait_for_selector('#versions tr[data-version="v1"]')
    row = page.inner_text('#versions tr[data-version="v1"]')
    assert "v0" in row and "dpo" in row and "passed" in row  # lineage, algorithm, gate verdict
    # an answer from v1 for a cross-version comparison later
    v1_answer = _ask(stack, "Which is better?")

    page.click("#rollback")
    _confirm(page, "Roll back")
    _wait_served(stack, "v0")
    page.wait_for_selector("#current-version:has-text('v0')")
    v0_answer = _ask(stack, "Which is better?")
    deploy = page.locator('#versions tr[data-version="v1"] button.deploy')
    deploy.wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('#versions tr[data-version=\"v1\"] button.deploy').disabled")
    deploy.click()
    _confirm(page, "Deploy v1", reason="ship it after review")
    _wait_served(stack, "v1")
    page.wait_for_selector("#current-version:has-text('v1')")
    # the history table refreshes on the console's poll, maybe after the current version does
    page.wait_for_function("() => document.getElementById('deploys').textContent.includes('ship it after review')")
    history = page.inner_text("#deploys")
    assert "console:alice" in history and "rollback" in history and "ship it after review" in history
    # live stats by version: v1 beats v0 in a cross-version comparison, thumbs on v1
    fb = httpx.post(stack["url"] + "/v1/comparisons", timeout=30, json={
        "response_ids": [v0_answer["response_id"], v1_answer["response_id"]], "choice": "b",
        "feedback_token": [v0_answer["feedback_token"], v1_answer["feedback_token"]]})
    assert fb.status_code == 200, fb.text
    httpx.post(stack["url"] + "/v1/feedback", timeout=30, json={
        "response_id": v1_answer["response_id"], "rating": "up",
        "feedback_token": v1_answer["feedback_token"]}).raise_for_status()
    page.wait_for_function("() => (document.querySelector('#versions tr[data-version=\"v1\"] td.win-rate')"
                           " || {}).textContent === '100% (1)'", timeout=30_000)
    assert page.inner_text('#versions tr[data-version="v1"] td.up-rate') == "100% (1)"
    assert page.locator("#curve svg circle").count() >= 2
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "ui-console.png"), full_page=True)
    # the export route: the pairs trained on plus the live ones, in both trainer formats
    h = {"Authorization": f"Bearer {ADMIN}"}
    dpo = httpx.get(stack["url"] + "/admin/export", params={"format": "openai-dpo"}, headers=h, timeout=60)
    assert dpo.status_code == 200 and len(dpo.text.splitlines()) >= 10
    assert {"input", "preferred_output", "non_preferred_output"} == set(json.loads(dpo.text.splitlines()[0]))
    trl = httpx.get(stack["url"] + "/admin/export", params={"format": "trl", "version": "v1"}, headers=h)
    assert trl.status_code == 200 and trl.text == ""  # v1's only pair is against v0
    assert httpx.get(stack["url"] + "/admin/export", params={"format": "csv"}, headers=h).status_code == 422
    assert httpx.get(stack["url"] + "/admin/export").status_code == 401


def _ask(stack, prompt: str) -> dict:
    res = httpx.post(stack["url"] + "/v1/chat/completions", timeout=120,
                     headers={"Authorization": f"Bearer {API_KEY}"},
                     json={"model": "policy", "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": 8, "user": "cross-version-rater"}).json()
    return res["choices"][0] | {"model_version": res["model_version"]}


def _serious(results) -> list[str]:
    return [f"{v['id']} ({v['impact']}): {v['help']} @ {[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]


def test_axe_no_serious_violations(browser, stack):
    from axe_playwright_python.sync_playwright import Axe
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(T)
        _open_chat(page, stack, compare=False)
        _say(page, "Accessibility check", 0)
        page.check("#compare")
        _say(page, "And a pair", 1, ".compare-widget")
        page.click('li[data-turn="0"] summary')
        chat = Axe().run(page)
        _console(page, stack)
        page.wait_for_selector('#versions tr[data-version="v0"]')
        console = Axe().run(page)
        page.click("#rollback")
        page.locator("dialog#confirm").wait_for(state="visible")
        dialog = Axe().run(page)
        page.click("#confirm-cancel")
    finally:
        ctx.close()
    problems = _serious(chat) + _serious(console) + _serious(dialog)
    assert not problems, problems
