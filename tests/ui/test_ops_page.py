"""The operations page (GET /admin/ui/ on the admin listener) in a real browser.

The tests run in file order and share one gateway: the token is refused, then accepted; routes
are shown; a canary rollout progresses under load and is rolled back with the page's button
(checked in the page and with `modelgate admin routes`); a weight change the API refuses is
explained; HTML from the API is shown as text.
"""

import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from conftest import HTML_NAME, LONG_NAME

# The page reads the API every 3 s; a change shows within two reads.
SEEN = 10_000


def admin(gateway, method, path, body=None, headers=None):
    """One admin API call from this process (no browser): (status, JSON body)."""
    request = urllib.request.Request(gateway.url + path, method=method)
    request.add_header("Authorization", f"Bearer {gateway.token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, data, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def log_in(page, gateway):
    page.goto(gateway.page_url)
    page.fill("#token", gateway.token)
    page.click("#login button[type=submit]")
    expect(page.locator("#main")).to_be_visible(timeout=SEEN)


def card(page, model):
    return page.locator(f'details.model[data-model="{model}"]')


def weight_cell(page, model, version):
    return card(page, model).locator(f'tr[data-version="{version}"] td.weight')


class Load:
    """Inference requests to the public name `mlp` from two threads, until stopped."""

    def __init__(self, port):
        self.port, self.stop_flag, self.sent, self.failed = port, threading.Event(), 0, 0
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        self.body = json.dumps(body).encode()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop_flag.is_set():
            try:
                connection.request("POST", "/v2/models/mlp/infer", self.body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self.sent += 1
                self.failed += response.status != 200
            except (OSError, http.client.HTTPException):
                self.failed += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.02)
        connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for thread in self.threads:
            thread.join(timeout=15)


def test_the_page_is_served_with_strict_headers_and_the_api_still_needs_the_token(gateway):
    sizes = {}
    for name, kind in [("", "text/html"), ("ops.js", "text/javascript"), ("ops.css", "text/css"),
                       ("uplot.js", "text/javascript"), ("uplot.css", "text/css")]:
        with urllib.request.urlopen(gateway.page_url + name, timeout=10) as response:
            headers = response.headers
            assert headers["Content-Type"].startswith(kind), name
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Cache-Control"] == "no-store"
            csp = headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
            sizes[name or "index.html"] = len(response.read())
    total = sum(sizes.values())
    print(f"page size over the wire: {total} bytes ({sizes})")
    assert total < 300 * 1024
    # The page loads without a token; the data does not.
    status, body = admin(gateway, "GET", "/admin/v1/routes", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert status == 401, body
    # Another site's page is refused even with the token; the page's own origin is not.
    status, _ = admin(gateway, "GET", "/admin/v1/routes", headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _ = admin(gateway, "GET", "/admin/v1/routes", headers={"Origin": gateway.url})
    assert status == 200


def test_without_the_token_the_page_asks_and_a_wrong_one_is_refused(page, gateway, shoot):
    page.goto(gateway.page_url)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    shoot(page, "01-asks-for-the-token")
    page.fill("#token", "this-is-not-the-admin-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-message")).to_contain_text("refused the token", timeout=SEEN)
    expect(page.locator("#main")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    assert "token" not in page.url
    shoot(page, "02-wrong-token-refused")


def test_with_the_token_the_models_and_routes_are_shown(page, gateway, shoot):
    status, body = admin(gateway, "PUT", "/admin/v1/routes/mlp", {"targets": [{"version": 1, "weight": 100}]})
    assert status == 200, body
    log_in(page, gateway)
    for model in ("mlp", "simple", "broken", LONG_NAME):
        expect(card(page, model)).to_be_attached()
    expect(weight_cell(page, "mlp", 1)).to_have_text("100 %")
    expect(page.locator("#status")).to_contain_text("live")
    # This gateway runs no control plane (--control-plane-port 0): the registry panel shows the
    # admin API's refusal of its registry reads.
    expect(page.locator("#registry-message")).to_contain_text("Refused (503)", timeout=SEEN)
    expect(page.locator("#registry-message")).to_contain_text("follows no control plane")
    # The token stays in this tab's session storage only.
    assert page.evaluate("sessionStorage.getItem('modelgate.adminToken')") == gateway.token
    assert page.context.cookies() == []
    # A reload keeps the tab's token: no second question.
    page.reload()
    expect(page.locator("#main")).to_be_visible(timeout=SEEN)
    shoot(page, "03-models-and-routes")


def test_html_from_the_api_is_shown_as_text_never_run(page, gateway, shoot):
    log_in(page, gateway)
    broken = card(page, "broken")
    if broken.get_attribute("open") is None:
        broken.locator("summary").click()
    expect(broken).to_contain_text(HTML_NAME, timeout=SEEN)
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__xss") is None
    shoot(page, "04-html-shown-as-text")


def test_a_canary_rollout_is_watched_under_load_and_rolled_back_with_the_button(page, gateway, shoot):
    route = {
        "targets": [{"version": 1}, {"version": 2}],
        "rollout": {
            "canary": 2, "step_weights": [10, 30, 60, 90, 100], "interval": "6s", "check_interval": "500ms",
            "window": "5s", "threshold": 2, "min_requests": 5, "max_error_rate": 0.5, "max_p99_latency": "5s",
        },
    }
    log_in(page, gateway)
    with Load(gateway.http_port) as load:
        status, body = admin(gateway, "PUT", "/admin/v1/routes/mlp", route)
        assert status == 200, body
        mlp = card(page, "mlp")
        expect(mlp.locator("summary .badge-progressing")).to_be_visible(timeout=SEEN)
        # The canary steps up (10 % -> 30 %) while the page watches: checks and events appear.
        expect(weight_cell(page, "mlp", 2)).to_have_text(re.compile(r"^(30|60) %$"), timeout=20_000)
        expect(mlp.locator("table.checks tbody tr").first).to_be_visible()
        expect(mlp.locator("ol.events")).to_contain_text("step")
        if page.evaluate("typeof window.uPlot") == "function":
            expect(mlp.locator(".chart canvas")).to_have_count(4)
        else:
            expect(page.locator("#charts-off")).to_be_visible()
        shoot(page, "05-rollout-progressing")

        page.once("dialog", lambda dialog: dialog.accept())
        mlp.locator("button.command-rollback").click()
        expect(mlp.locator(".message")).to_contain_text("Roll back: done")
        expect(mlp.locator("summary .badge-failed")).to_be_visible(timeout=SEEN)
        expect(weight_cell(page, "mlp", 2)).to_have_text("0 %")
        expect(weight_cell(page, "mlp", 1)).to_have_text("100 %")
        expect(mlp.locator('tr[data-version="2"] td.note')).to_contain_text("rolled back")
        shoot(page, "06-rolled-back")
    assert load.sent > 50 and load.failed == 0, (load.sent, load.failed)
    # The CLI sees the same route.
    listed = json.loads(gateway.admin_cli("routes"))
    mlp_route = next(r for r in listed["routes"] if r["model"] == "mlp")
    targets = {t["version"]: t for t in mlp_route["targets"]}
    assert targets[2]["weight"] == 0 and targets[2]["failed"] and targets[1]["weight"] == 100, targets
    assert mlp_route["rollout"]["state"] == "failed", mlp_route["rollout"]


def test_a_refused_weight_change_is_explained(page, gateway, shoot):
    log_in(page, gateway)
    mlp = card(page, "mlp")
    mlp.locator("button.set-weights").click()
    mlp.locator('input[data-version="1"]').fill("60")
    mlp.locator('input[data-version="2"]').fill("30")
    expect(mlp.locator(".sum")).to_contain_text("sum 90 %")
    page.once("dialog", lambda dialog: dialog.accept())
    mlp.locator(".weights button[type=submit]").click()
    expect(mlp.locator(".message.error")).to_contain_text("Refused (400)", timeout=SEEN)
    expect(mlp.locator(".message.error")).to_contain_text("100")
    # Nothing changed.
    expect(weight_cell(page, "mlp", 1)).to_have_text("100 %")
    shoot(page, "07-refused-weight-change")


def test_a_token_changed_while_the_page_is_open_sends_the_operator_back_to_the_form(page, gateway, shoot):
    log_in(page, gateway)
    page.evaluate("sessionStorage.setItem('modelgate.adminToken', 'a-token-that-expired-0000')")
    expect(page.locator("#login-message")).to_contain_text("refused the token", timeout=SEEN)
    shoot(page, "08-token-refused-while-open")


def test_without_the_chart_library_the_page_shows_numbers_and_says_so(page, gateway, shoot):
    # What a build without `scripts/setup.sh ui` serves: an empty uplot.js.
    page.route("**/admin/ui/uplot.js", lambda route: route.fulfill(body="", content_type="text/javascript"))
    log_in(page, gateway)
    expect(page.locator("#charts-off")).to_be_visible()
    mlp = card(page, "mlp")
    expect(weight_cell(page, "mlp", 1)).to_have_text("100 %")
    assert mlp.locator(".chart").count() == 0
    shoot(page, "09-no-chart-library")


def test_the_page_fits_a_phone(browser, gateway, shoot):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    log_in(page, gateway)
    expect(card(page, "mlp")).to_be_visible()
    # Long names wrap: nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "10-phone")
    context.close()
