"""The technician's page end to end in headless Chromium (Debian's /usr/bin/chromium driven
by playwright; no browser download, no network): log in, register, see arming refused
with its reason, expose with hold-to-expose, see the cage checks and the verdict."""

import shutil
import time

import pytest

from acquisition.service.testing import PASSWORD, USER, StationProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    st = StationProcess(tmp_path_factory.mktemp("ui") / "data").start()
    yield st
    st.stop()


@pytest.fixture(scope="module")
def page(station):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        requests = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.requests = requests
        yield pg
        browser.close()


def state_is(page, *states, timeout=30_000):
    wanted = ",".join(f"'{s}'" for s in states)
    page.wait_for_function(
        f"[{wanted}].includes(document.getElementById('exam-state').textContent)",
        timeout=timeout,
    )


def test_login_register_expose_verdict(station, page):
    page.goto(station.url + "/")
    page.wait_for_selector("#login-panel:not([hidden])")
    page.fill("#login-user", USER)
    page.fill("#login-password", "wrong-password")
    page.click("#login-submit")
    page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
    assert "Wrong user name or password" in page.text_content("#login-error")
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("#station:not([hidden])")
    assert USER in page.text_content("#who-name")
    # live status arrives over SSE
    page.wait_for_function("document.getElementById('st-controller').textContent.includes('idle')")
    assert "door: closed" in page.text_content("#st-interlocks")

    page.fill("#reg-pid", "UI-1")
    page.fill("#reg-name", "Browser^Bea")
    page.select_option("#reg-region", "lower")
    page.click("#register")
    state_is(page, "registered")
    assert "0350T" in page.text_content("#exam-title")
    assert page.input_value("#t-A-kv") == "65"
    page.click("#btn-technique")
    state_is(page, "ready")

    # arming refused, with the reason on screen, while the door is open
    page.click("#sim-door")
    page.wait_for_function("document.getElementById('il-door').textContent.includes('OPEN')")
    page.click("#btn-arm")
    page.wait_for_function("document.getElementById('message').textContent.length > 0")
    assert "Arming refused" in page.text_content("#message")
    assert "door" in page.text_content("#message")
    state_is(page, "ready")
    page.click("#sim-door")
    page.wait_for_function("document.getElementById('il-door').textContent.includes('closed')")

    for _ in range(3):  # a loaded machine may delay a keep-alive past the board's timeout
        page.click("#btn-arm")
        state_is(page, "armed", timeout=15_000)
        box = page.locator("#btn-hold").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        state_is(page, "acquiring", "processing", "review", "ready", timeout=15_000)
        page.mouse.up()
        if page.text_content("#exam-state") != "ready":
            break
        time.sleep(0.3)
    t0 = time.monotonic()
    # each view's cage check on screen, then the verdict with its reasons
    for v in "AB":
        page.wait_for_function(
            f"document.getElementById('cc-{v}').textContent.includes('cage markers found')",
            timeout=30_000,
        )
    state_is(page, "review", timeout=60_000)
    page.wait_for_function(
        "['PASS', 'RETAKE'].includes(document.getElementById('verdict').textContent)"
    )
    assert time.monotonic() - t0 < 60
    rows = page.locator("#checks tbody tr").all_text_contents()
    assert any("tube_skew" in r for r in rows)
    assert any("cage_visibility" in r for r in rows)
    verdict = page.text_content("#verdict")
    failing = [r for r in rows if "FAIL" in r]
    assert (verdict == "PASS") == (not failing)
    # the overlay images are loaded (the result overlays, after processing)
    page.wait_for_function(
        "['A','B'].every(v => { const i = document.getElementById('img-' + v);"
        " return i.complete && i.naturalWidth > 0 && i.src.includes('result-'); })"
    )
    assert page.locator("#attempts tbody tr").count() >= 1
    page.click("#btn-accept")
    state_is(page, "completed")
    assert "used" in page.locator("#attempts tbody tr").first.text_content()
    # the page needed nothing from outside the station
    assert all(u.startswith(station.url) for u in page.requests), page.requests
