"""The operator console in a real headless Chromium against a real `gateway serve` with a
webhook subscription to a real receiver: sign-in, calls updating live, a call's page, Retry,
Replay, a test send, Enable, campaigns' Pause/Resume/Cancel, attacker-controlled text, and a
simulated call's recording played by the page."""

from __future__ import annotations


import httpx
import pytest
from selenium.webdriver.common.by import By

from console.browser import button, chromium, follow, press, sign_in, wait_for
from support import API_KEY, Receiver, base_config, twilio_status_callback, wait_until

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"
TOKEN = "tok-console-secret-77"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def admin(proc, method, path, **kw):
    return httpx.request(method, proc.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20, **kw)


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def receiver():
    failing = {"run-retry"}  # the first delivery of these runs gets 400 (failed, not retried)

    def script(n, path):
        run = path.split("/")[2] if path.count("/") >= 2 else ""
        if run in failing:
            failing.discard(run)
            return 400, {}, b'{"error": "not today"}', 0.0
        return 200, {}, b'{"customer": {"tier": "gold"}, "ok": true}', 0.0

    with Receiver(script) as rec:
        yield rec


@pytest.fixture
def gateway(gateway_process, tmp_path, receiver):
    subscription = {
        "name": "crm", "events": ["call.ended"], "url": receiver.url + "/hooks/{{workflow_run_id}}/{{initial_context.tenant}}",
        "auth": {"type": "bearer_token", "token": "{{secret.CRM_TOKEN}}"}, "signing": {"scheme": "standard", "secrets": [WHSEC]},
        "response_mapping": {"tier": "customer.tier"}, "allow_networks": ["127.0.0.0/8"], "timeout": 5,
    }
    return gateway_process(base_config(tmp_path, webhooks=[subscription], secrets={"CRM_TOKEN": TOKEN},
                                       delivery={"poll_seconds": 0.2}))


def text_of(driver):
    return driver.find_element(By.ID, "view").text


def severe(driver):
    """The page's console errors so far (the log is read once)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_console_serves_its_files_with_a_strict_policy(gateway):
    page = httpx.get(gateway.url + "/console/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and " style=" not in page.text  # no inline script or style
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(gateway.url + "/console/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == policy
    assert httpx.get(gateway.url + "/console/nope.js").status_code == 404
    assert "set-cookie" not in page.headers
    assert httpx.get(gateway.url + "/console", follow_redirects=True).url.path == "/console/"


def test_sign_in_calls_live_a_call_retry_and_attacker_text(gateway, receiver, browser):
    sign_in(browser, gateway.url, "not-the-key")
    error = wait_for(browser, lambda d: (e := d.find_element(By.ID, "signin-error")).is_displayed() and e, what="the wrong-key message")
    assert "not accepted" in error.text
    assert browser.find_element(By.ID, "api-key").accessible_name == "API key"
    assert browser.execute_script("return sessionStorage.length") == 0
    browser.get_log("browser")  # the 401 of the wrong key is expected: start the log afresh

    sign_in(browser, gateway.url, API_KEY)
    wait_for(browser, lambda d: "No calls yet." in text_of(d), what="the empty calls page")
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return Object.values(sessionStorage)") == [API_KEY]
    browser.execute_script("window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));")

    # A call appears and completes while the page is open (no reload).
    twilio_status_callback(gateway, "run-live", "ringing", From=XSS, To=SCRIPT)
    wait_for(browser, lambda d: any("run-live" in r.text and "ringing" in r.text for r in d.find_elements(By.CSS_SELECTOR, "tbody tr")),
             what="the new call's row, ringing")
    twilio_status_callback(gateway, "run-live", "in-progress", From=XSS, To=SCRIPT)
    twilio_status_callback(gateway, "run-live", "completed", From=XSS, To=SCRIPT, CallDuration="7")
    wait_for(browser, lambda d: any("run-live" in r.text and "completed" in r.text and "7 s" in r.text
                                    for r in d.find_elements(By.CSS_SELECTOR, "tbody tr")), what="the call completed on the page")
    assert XSS in text_of(browser) and SCRIPT in text_of(browser)

    # Its page: the timeline, its events and the delivery it caused, the attacker's text as text.
    follow(browser, "run-live")
    wait_for(browser, lambda d: "call.ended" in text_of(d) and "succeeded" in text_of(d), what="the call's page with its delivery")
    view = text_of(browser)
    assert f"{XSS} → {SCRIPT}" in view and "call.completed" in view and "in-progress" in view
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return document.querySelectorAll('#view script').length") == 0
    assert browser.execute_script("return window.__alerts") == []

    # A failed delivery, retried from its page.
    twilio_status_callback(gateway, "run-retry", "completed", CallDuration="3")
    failed = wait_until(lambda: admin(gateway, "GET", "/api/v1/deliveries?status=failed").json()["deliveries"], 20, "a failed delivery")[0]
    browser.get(f"{gateway.url}/console/#/deliveries?status=failed")
    wait_for(browser, lambda d: failed["id"] in text_of(d), what="the failed delivery in the list")
    follow(browser, failed["id"])
    wait_for(browser, lambda d: "HTTP 400" in text_of(d) and "Attempt 1" in text_of(d), what="the failed attempt")
    view = text_of(browser)
    assert "Request sent" in view and "Answer received" in view and "not today" in view
    assert TOKEN not in view and WHSEC not in view and "[redacted]" in view
    press(browser, "Retry")
    wait_for(browser, lambda d: "Attempt 2" in text_of(d) and "succeeded" in text_of(d), what="the retried delivery succeeded")
    assert len(receiver.requests) == 3
    assert button(browser, "Replay").accessible_name == "Replay"

    assert browser.execute_script("return window.__alerts") == []
    assert severe(browser) == []


def test_webhooks_test_panel_enable_and_replay(gateway, receiver, browser):
    sign_in(browser, gateway.url, API_KEY)
    follow(browser, "Webhooks")
    wait_for(browser, lambda d: "healthy" in text_of(d) and "Inputs" in text_of(d), what="the webhooks page")
    view = text_of(browser)
    assert "bearer_token" in view and TOKEN not in view
    tenant = browser.find_element(By.CSS_SELECTOR, "input[data-path='initial_context.tenant']")
    assert tenant.accessible_name == "initial_context.tenant"
    tenant.send_keys("acme")
    browser.find_element(By.CSS_SELECTOR, "input[data-path='workflow_run_id']").send_keys("run-test")
    press(browser, "Send test")
    result = wait_for(browser, lambda d: (r := d.find_elements(By.ID, "test-result")) and r[0], what="the test result")
    text = result.text
    assert "Success" in text and "HTTP 200" in text
    assert "tier" in text and '"gold"' in text and "crm_action_success" in text
    assert "/hooks/run-test/acme" in text and TOKEN not in text and "[redacted]" in text
    [sent] = receiver.requests
    assert sent["path"] == "/hooks/run-test/acme" and sent["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert admin(gateway, "GET", "/api/v1/deliveries").json()["deliveries"] == []  # a test records nothing

    # Replay: a past call's event queued again for the subscription.
    twilio_status_callback(gateway, "run-replay", "completed", CallDuration="2")
    receiver.wait_for(2)
    browser.get(f"{gateway.url}/console/#/deliveries")
    wait_for(browser, lambda d: "run-replay" in text_of(d), what="the delivery listed")
    press(browser, "Replay")
    wait_for(browser, lambda d: "1 delivery queued again for crm" in text_of(d), what="the replay's answer")
    receiver.wait_for(3)

    # A disabled endpoint shows Enable, and Enable enables it.
    import asyncio
    from datetime import datetime, timezone

    from gateway.config import load_config
    from gateway.store import open_store_for

    async def disable():
        store = open_store_for(load_config(str(gateway.config_path)).store)
        await store.open()
        try:
            await store.set_endpoint_disabled("crm", reason="HTTP 410 from the endpoint", now=datetime.now(timezone.utc))
        finally:
            await store.close()

    asyncio.run(disable())
    browser.get(f"{gateway.url}/console/#/webhooks/crm")
    wait_for(browser, lambda d: "HTTP 410 from the endpoint" in text_of(d), what="the disabled state")
    press(browser, "Enable")
    wait_for(browser, lambda d: "healthy" in text_of(d) and not [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Enable"],
             what="the endpoint enabled")
    assert admin(gateway, "GET", "/api/v1/subscriptions").json()["subscriptions"][0]["health"]["disabled_at"] is None
    assert severe(browser) == []


def test_a_revoked_key_signs_out_with_a_message(gateway, browser):
    sign_in(browser, gateway.url, API_KEY)
    wait_for(browser, lambda d: "No calls yet." in text_of(d), what="the calls page")
    browser.execute_script("sessionStorage.setItem('gateway.console.api-key', 'revoked')")
    wait_for(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), what="the sign-in form again")
    assert "no longer accepted" in browser.find_element(By.ID, "signin-error").text
    assert browser.execute_script("return sessionStorage.length") == 0


def test_campaigns_progress_pause_resume_cancel(gateway_process, tmp_path, browser):
    from dial.campaign_support import Network, create, dial_config
    from dial.fakes import FakeTwilio

    with FakeTwilio() as twilio, Network(twilio, hold=lambda entry: True):  # every call stays up: the campaign runs on
        proc = gateway_process(base_config(tmp_path, **dial_config(twilio)))
        made = create(proc.url, ["+14155550101", "+14155550102", "+14155550103"], concurrency=1, calls_per_second=50)
        made_name = made["name"] or made["id"]
        twilio.wait_for("create", 1)
        sign_in(browser, proc.url, API_KEY)
        follow(browser, "Campaigns")
        wait_for(browser, lambda d: made_name in text_of(d) and "running" in text_of(d), what="the running campaign")
        view = text_of(browser)
        assert "0 of 3" in view and "Calls placed" in view
        press(browser, "Pause")
        wait_for(browser, lambda d: "paused" in text_of(d), what="paused")
        press(browser, "Resume")
        wait_for(browser, lambda d: "running" in text_of(d), what="running again")
        press(browser, "Cancel")
        browser.switch_to.alert.accept()  # "Cancel campaign ...?"
        wait_for(browser, lambda d: "canceled" in text_of(d) and not d.find_elements(By.XPATH, "//button[.='Pause']"), what="canceled")
        assert admin(proc, "GET", f"/api/v1/campaigns/{made['id']}").json()["status"] == "canceled"
        assert severe(browser) == []


def test_a_simulated_calls_recording_plays_from_the_console(gateway_process, tmp_path, browser):
    import subprocess
    import sys

    proc = gateway_process(base_config(tmp_path, recording=True))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--seconds", "1", "--config", str(proc.config_path),
                             "--url", proc.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [call] = admin(proc, "GET", "/api/v1/calls").json()["calls"]
    sign_in(browser, proc.url, API_KEY)
    wait_for(browser, lambda d: call["workflow_run_id"] in text_of(d), what="the simulated call")
    follow(browser, call["workflow_run_id"])
    audio = wait_for(browser, lambda d: d.find_elements(By.TAG_NAME, "audio"), what="the recording's player")[0]
    assert audio.accessible_name == "Recording"
    src = audio.get_attribute("src")
    assert src.startswith(proc.url + "/api/v1/recordings/") and "signature=" in src
    # The page itself fetches it (same origin, under its policy): a stereo WAV.
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {cache: 'no-store'}).then(r => r.arrayBuffer().then(b => done([r.status, r.headers.get('content-type'), b.byteLength])))"
        ".catch(e => done(String(e)));", src)
    assert answer[0] == 200 and answer[1] == "audio/wav" and answer[2] > 44
    wait_for(browser, lambda d: d.execute_script("return arguments[0].readyState", audio) >= 1, what="the player read the WAV")
    assert browser.execute_script("return arguments[0].duration", audio) > 0.5
    assert severe(browser) == []
