"""The operations page's registry panels in a real browser, against a gateway that runs the
embedded control plane and profiles its traffic for drift (conftest.RegistryGateway).

In file order: shifted traffic through the gateway makes `drift16` drift for real (reference
set with `modelgate registry reference`, windows profiled by the gateway, verdicts by the
embedded evaluator), and the drift panel, the models list and `modelgate admin routes` show it;
an alias moved with `modelgate registry alias` shows in the alias history; the page survives a
gateway restart; the panels fit a phone; and a page of 500 models renders in bounded time and
stays light.
"""

import csv
import http.client
import json
import random
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from conftest import RegistryGateway

SEEN = 10_000
FEATURES = 16


@pytest.fixture(scope="module")
def registry_gateway(tmp_path_factory):
    gateway = RegistryGateway(tmp_path_factory.mktemp("modelgate-ui-registry"))
    yield gateway
    gateway.stop()


def admin(gateway, path):
    request = urllib.request.Request(gateway.url + path)
    request.add_header("Authorization", f"Bearer {gateway.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def eventually(what, seconds, check):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s (last: {str(last)[:500]})")


def log_in(page, gateway):
    page.goto(gateway.page_url)
    page.fill("#token", gateway.token)
    page.click("#login button[type=submit]")
    expect(page.locator("#main")).to_be_visible(timeout=SEEN)


def rows(n, shift, rng):
    """n rows of 16 N(shift, 1) features and a category in 0..4."""
    x = [[rng.gauss(shift, 1.0) for _ in range(FEATURES)] for _ in range(n)]
    cat = [rng.randrange(5) for _ in range(n)]
    return x, cat


def infer(connection, x, cat):
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [len(x), FEATURES], "datatype": "FP32", "data": [v for row in x for v in row]},
        {"name": "CAT", "shape": [len(cat), 1], "datatype": "INT64", "data": cat},
    ]})
    connection.request("POST", "/v2/models/drift16/infer", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    reply = response.read()
    assert response.status == 200, reply[:300]


def drifted_evaluation(gateway):
    status, answer = admin(gateway, "/admin/v1/registry/models/drift16/drift?history=1")
    if status != 200:
        return None
    evaluations = answer["versions"].get("1", {}).get("evaluations", [])
    return evaluations[0] if evaluations and evaluations[0]["dataset"]["drifted"] else None


def test_the_drift_panel_shows_a_version_that_drifted_under_shifted_traffic(page, registry_gateway, shoot):
    gw = registry_gateway
    # The seeded model is registered before its first evaluation: the registry read answers.
    eventually("drift16 registered", 30, lambda: admin(gw, "/admin/v1/registry/models/drift16/drift")[0] == 200)
    rng = random.Random(13)
    reference = gw.work / "reference.csv"
    with open(reference, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([f"INPUT0[{i}]" for i in range(FEATURES)] + ["CAT[0]"])
        x, cat = rows(2000, 0.0, rng)
        for row, c in zip(x, cat):
            out.writerow([repr(v) for v in row] + [c])
    profile = gw.work / "reference.json"
    subprocess.run([str(gw.binary), "profile", str(reference), "--categorical", "CAT[0]", "-o", str(profile)],
                   check=True, capture_output=True, timeout=60)
    gw.registry_cli("reference", "drift16", "1", str(profile))
    # Traffic shifted by one standard deviation until the evaluator says version 1 drifted (the
    # gateway profiles on the reference's edges from the state that carries it: a few seconds).
    connection = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    deadline = time.monotonic() + 90
    evaluation = None
    while evaluation is None and time.monotonic() < deadline:
        for _ in range(5):
            infer(connection, *rows(60, 1.0, rng))
        evaluation = drifted_evaluation(gw)
    connection.close()
    assert evaluation is not None, "no drifted evaluation of drift16 v1 within 90 s"
    # The follower learns the verdict with the desired state: the route status carries it.
    def route_drift():
        listed = json.loads(gw.admin_cli("routes"))
        route = next((r for r in listed["routes"] if r["model"] == "drift16"), None)
        target = route and next((t for t in route["targets"] if t["version"] == 1), None)
        return target and target.get("drift") and target["drift"]["drifted"] and target["drift"]
    mark = eventually("modelgate admin routes shows drift16 v1 drifted", 30, route_drift)
    assert mark["worst"]["drifted"] and mark["worst"]["feature"], mark

    log_in(page, gw)
    expect(page.locator("#registry-model")).to_have_value("drift16", timeout=SEEN)
    version = page.locator('#drift-versions tr[data-version="1"]')
    expect(version).to_contain_text("drifted", timeout=SEEN)
    expect(version).to_have_class("drifted chosen")
    expect(page.locator("#drift-features tr.drifted").first).to_be_visible()
    expect(page.locator("#drift-features caption")).to_contain_text("Version 1")
    # The chosen feature's statistic over time and its reference vs current distribution.
    if page.evaluate("typeof window.uPlot") == "function":
        expect(page.locator("#drift-charts .drift-history canvas")).to_have_count(1)
        expect(page.locator("#drift-charts .drift-distribution canvas")).to_have_count(1)
    expect(page.locator("#drift-charts table.distribution tbody tr").first).to_be_attached()
    # The models list: the route's drift column, the registry's alias and digest.
    card = page.locator('details.model[data-model="drift16"]')
    expect(card.locator("summary .badge-failed")).to_have_text("drifted")
    expect(card.locator('tr[data-version="1"] td.drift')).to_contain_text("drifted (worst ", timeout=SEEN)
    expect(card.locator('tr[data-version="1"] td.registry')).to_contain_text("@champion", timeout=20_000)
    expect(card.locator('tr[data-version="1"] td.registry code.digest')).to_contain_text("sha256:")
    shoot(page, "11-drift-panel")

    # Another feature, chosen by its button, is drawn instead.
    other = page.locator("#drift-features tbody tr:not(.chosen) button.show-feature").first
    name = other.locator("xpath=ancestor::tr").get_attribute("data-feature")
    other.click()
    expect(page.locator(f'#drift-features tr.chosen[data-feature="{name}"]')).to_be_attached(timeout=SEEN)
    expect(page.locator("#drift-charts table.distribution caption")).to_contain_text(name)
    shoot(page, "12-drift-another-feature")


def test_an_alias_moved_with_the_cli_shows_in_the_alias_history(page, registry_gateway, shoot):
    gw = registry_gateway
    reason = "ui test: <b>challenger</b> for the drift study"
    gw.registry_cli("alias", "drift16", "challenger", "1", "--reason", reason, actor="alice")
    log_in(page, gw)
    row = page.locator('#alias-history tr[data-alias="challenger"]').first
    expect(row).to_contain_text("alice", timeout=SEEN)
    expect(row).to_contain_text(reason)  # the markup is text
    expect(row).to_contain_text("created → v1")
    assert page.locator("#alias-history b").count() == 0
    # The seeding's champion move is there too, older (the table is newest first).
    expect(page.locator('#alias-history tr[data-alias="champion"]')).to_be_attached()
    shoot(page, "13-alias-history")


def test_the_page_survives_a_gateway_restart_and_asks_for_the_token_once(page, registry_gateway, shoot):
    gw = registry_gateway
    log_in(page, gw)
    expect(page.locator("#status")).to_contain_text("live")
    gw.stop()
    try:
        expect(page.locator("#status")).to_contain_text("unreachable", timeout=SEEN)
        expect(page.locator("#login")).to_be_hidden()
        shoot(page, "14-gateway-down")
    finally:
        gw.start()
    expect(page.locator("#status")).to_contain_text("live", timeout=20_000)
    expect(page.locator('details.model[data-model="drift16"]')).to_be_attached()
    # A reload after the restart: the tab still holds the token, no second question.
    page.reload()
    expect(page.locator("#main")).to_be_visible(timeout=SEEN)
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#registry-model")).to_have_value("drift16", timeout=SEEN)
    assert page.evaluate("sessionStorage.getItem('modelgate.adminToken')") == gw.token
    shoot(page, "15-after-restart")


def test_the_registry_panels_fit_a_phone(browser, registry_gateway, shoot):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    log_in(page, registry_gateway)
    expect(page.locator('#drift-versions tr[data-version="1"]')).to_contain_text("drifted", timeout=SEEN)
    expect(page.locator('#alias-history tr[data-alias="challenger"]')).to_be_attached()
    # Wide tables scroll in their own box: nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "17-registry-phone")
    context.close()


def synthetic_fleet(n):
    """The admin API's answers for n models, each with a two-version route and a rollout on every
    tenth: what a large gateway sends the page."""
    models, routes = [], []
    window = {"span_ms": 10000, "requests": 100, "success": 99, "server_errors": 1, "client_errors": 0,
              "error_rate": 0.01, "p99_ms": 12.5, "p50_ms": 3.2}
    for i in range(n):
        name = f"model_{i:03d}"
        models += [{"name": name, "version": "1", "state": "READY"}, {"name": name, "version": "2", "state": "READY"}]
        targets = [{"version": v, "weight": w, "failed": False, "ready": True, "in_flight": 0, "window": window}
                   for v, w in ((1, 90), (2, 10))]
        route = {"model": name, "generation": 1, "targets": targets,
                 "spec": {"model": name, "targets": [{"version": 1}, {"version": 2}]}}
        if i % 10 == 0:
            route["rollout"] = {"state": "progressing", "canary": 2, "baseline": 1, "canary_weight": 10, "step": 0,
                                "step_weights": [10, 50, 100], "failed_checks": 0, "events": []}
        routes.append(route)
    return models, {"routes": routes}


def test_five_hundred_models_render_in_bounded_time_and_the_page_stays_light(page, registry_gateway, shoot):
    gw = registry_gateway
    models, routes = synthetic_fleet(500)
    models, routes = json.dumps(models), json.dumps(routes)
    page.route("**/admin/v1/models", lambda route: route.fulfill(body=models, content_type="application/json"))
    page.route("**/admin/v1/routes", lambda route: route.fulfill(body=routes, content_type="application/json"))
    page.goto(gw.page_url)
    page.fill("#token", gw.token)
    started = time.monotonic()
    page.click("#login button[type=submit]")
    expect(page.locator("#status")).to_contain_text("live", timeout=SEEN)
    expect(page.locator("details.model")).to_have_count(500, timeout=SEEN)
    expect(page.locator("#models-summary")).to_contain_text("500 models, 500 routes, 50 rollouts")
    rendered = time.monotonic() - started
    # Only the first few rollouts are open (each open card draws four charts); the rest wait closed.
    assert page.locator("details.model[open]").count() <= 6
    # The filter narrows 500 cards at once.
    started = time.monotonic()
    page.fill("#filter", "model_499")
    expect(page.locator("details.model:not([hidden])")).to_have_count(1)
    filtered = time.monotonic() - started
    print(f"500 models: rendered in {rendered:.2f} s, filtered in {filtered:.2f} s")
    assert rendered < 5.0 and filtered < 2.0, (rendered, filtered)
    shoot(page, "16-five-hundred-models")
    # What the page itself weighs over the wire: the document and its files (not the API's data).
    entries = page.evaluate("""() => [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
        .filter((e) => !e.name.includes('/admin/v1/'))
        .map((e) => ({ name: e.name, transfer: e.transferSize, body: e.encodedBodySize }))""")
    # (chromium also asks for /favicon.ico: a 404 of a few bytes, counted in the total)
    names = sorted(e["name"].rsplit("/", 1)[-1] or "index.html" for e in entries)
    assert [n for n in names if n != "favicon.ico"] == ["index.html", "ops.css", "ops.js", "uplot.css", "uplot.js"], names
    total = sum(e["transfer"] for e in entries)
    body = sum(e["body"] for e in entries)
    print(f"page weight over the wire: {total} bytes with headers, {body} bytes of bodies, uncompressed")
    assert 0 < body <= total < 150 * 1024, (body, total)
