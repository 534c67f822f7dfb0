"""The reference admin page (examples/admin_web), clicked through in a real headless browser.

Debian's Chromium and ChromeDriver (packages ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them) driven by Selenium: select
members, read the precautions dialog, pick force change or request change,
confirm, watch the progress, read the per-member result and download it as
CSV. Screenshots of each run are saved under ``artifacts/screenshots/``.
Without Chromium the tests skip, saying so; in CI they fail instead.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import argon2
import pytest

from bulkreset import Outcome
from bulkreset.adapters.sqlite import open_service

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "Copper-Meadow-Falcon-77"


def browser_paths() -> tuple[str, str]:
    """Chromium and ChromeDriver, or skip (fail in CI) saying how to install them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = (
        "the admin page's browser tests need Chromium and ChromeDriver "
        "(Debian: apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; .ci/run installs them")
    pytest.skip(message)


@pytest.fixture
def site(tmp_path: Path, cheap_hasher: argon2.PasswordHasher) -> Iterator[tuple[str, Any]]:
    """The admin page over a SQLite file of the demo directory, served on loopback."""
    from examples.admin_web.app import create_app, load_demo_members
    from werkzeug.serving import make_server

    service = open_service(tmp_path / "members.db", hasher=cheap_hasher)
    service.store.add_members(load_demo_members())  # type: ignore[attr-defined]
    server = make_server("127.0.0.1", 0, create_app(service, actor="d001"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", service
    finally:
        server.shutdown()
        thread.join(timeout=10)
        service.store.close()  # type: ignore[attr-defined]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium under ChromeDriver, flags as this machine needs them."""
    chromium, driver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.implicitly_wait(0)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(chrome: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, timeout).until(condition)


def by_id(chrome: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return chrome.find_element(By.ID, element_id)


def screenshot(chrome: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert chrome.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def open_dialog(chrome: Any, base: str, choose: list[str] | None) -> Any:
    """Select members (all, or *choose*), press Reset password; the dialog, once filled."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    chrome.get(base + "/")
    assert by_id(chrome, "reset-button").get_attribute("disabled") is not None
    if choose is None:
        by_id(chrome, "select-all").click()
    else:
        for member_id in choose:
            chrome.find_element(By.CSS_SELECTOR, f"input.member[value='{member_id}']").click()
    by_id(chrome, "reset-button").click()
    dialog = wait_for(chrome, ec.visibility_of_element_located((By.ID, "reset-dialog")))
    wait_for(chrome, lambda c: by_id(c, "counts").text)
    return dialog


def confirm_and_apply(chrome: Any) -> str:
    """On the plan page: type the confirmation code, apply, wait for the result page."""
    from selenium.webdriver.support import expected_conditions as ec

    wait_for(chrome, ec.url_contains("/plans/"))
    plan_id = chrome.current_url.rstrip("/").rsplit("/", 1)[1]
    by_id(chrome, "confirm").send_keys(by_id(chrome, "code").text)
    by_id(chrome, "apply").click()
    wait_for(chrome, ec.url_contains("/result"), timeout=60)
    return plan_id


def result_rows(chrome: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    rows = chrome.find_elements(By.CSS_SELECTOR, "#result tbody tr")
    return {
        row.get_attribute("data-member"): row.find_element(By.CSS_SELECTOR, ".outcome").text
        for row in rows
    }


def test_force_change_of_everyone_through_the_page(site: tuple[str, Any], browser: Any) -> None:
    """Select all, read the precautions (counts and who cannot self-recover), OK, force
    change with a password typed twice, confirm, progress, result, CSV download."""
    base, service = site  # the page's service: to check what the clicks did
    members = [m for page in service.store.iter_members() for m in page]
    no_recovery = {m.member_id for m in members if not m.can_self_recover}
    open_dialog(browser, base, None)
    assert by_id(browser, "selected-count").text == f"{len(members)} selected"
    assert f"{len(members)} member(s) selected" in by_id(browser, "counts").text
    from selenium.webdriver.common.by import By

    listed = {
        item.get_attribute("data-member")
        for item in browser.find_elements(By.CSS_SELECTOR, "#no-recovery-list li")
    }
    assert no_recovery == listed
    assert len(browser.find_elements(By.CSS_SELECTOR, "#precautions li")) >= 3
    screenshot(browser, "admin-web-precautions")
    by_id(browser, "ok").click()
    assert by_id(browser, "mode-force").is_selected()
    by_id(browser, "password").send_keys(PASSWORD)
    by_id(browser, "password2").send_keys(PASSWORD + "x")
    by_id(browser, "make-plan").click()
    error = wait_for(browser, lambda c: c.find_elements(By.ID, "error"))[0]  # the reloaded page
    assert "differ" in error.text  # nothing planned
    open_dialog(browser, base, None)
    by_id(browser, "ok").click()
    by_id(browser, "password").send_keys(PASSWORD)
    by_id(browser, "password2").send_keys(PASSWORD)
    by_id(browser, "make-plan").click()
    plan_id = confirm_and_apply(browser)
    plan = service.load_plan(plan_id)
    outcomes = result_rows(browser)
    assert len(plan.targets) + len(plan.excluded) == len(outcomes)
    assert {m.member_id for m in plan.targets} == {
        i for i, outcome in outcomes.items() if outcome == "reset"
    }
    assert "excluded" == outcomes["d001"]  # the acting administrator
    screenshot(browser, "admin-web-force-result")
    target = plan.targets[0]
    signed_in = service.authenticate(target.login_id, PASSWORD)
    assert (True, True) == (signed_in.ok, signed_in.must_change_password)
    link = by_id(browser, "download").get_attribute("href")
    with urllib.request.urlopen(link, timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(outcomes) == len(rows)
    assert PASSWORD not in text


def test_request_change_of_a_few_through_the_page(site: tuple[str, Any], browser: Any) -> None:
    """Select three members one by one, OK, request change, confirm: each gets a change
    request in the outbox; the result page says so."""
    from selenium.webdriver.common.by import By

    base, service = site
    chosen = ["d003", "d007", "d010"]
    open_dialog(browser, base, chosen)
    assert "3 member(s) selected" in by_id(browser, "counts").text
    by_id(browser, "ok").click()
    by_id(browser, "mode-request").click()
    assert not by_id(browser, "password").is_displayed()
    by_id(browser, "make-plan").click()
    plan_id = confirm_and_apply(browser)
    assert dict.fromkeys(chosen, "requested") == result_rows(browser)
    counts = {
        span.get_attribute("data-outcome"): span.text
        for span in browser.find_elements(By.CSS_SELECTOR, "#result-counts .count")
    }
    assert "requested: 3" == counts["requested"]
    screenshot(browser, "admin-web-request-result")
    browser.get(f"{base}/plans/{plan_id}")  # the plan page again: Apply, a wrong code
    wait_for(browser, lambda c: c.find_elements(By.ID, "confirm"))
    by_id(browser, "confirm").send_keys("WRONG-CODE")
    by_id(browser, "apply").click()
    wait_for(browser, lambda c: "/result" in c.current_url)
    assert dict.fromkeys(chosen, "requested") == result_rows(browser)  # the result stays
    pending = service.notifier.pending()
    assert sorted(chosen) == sorted(n.member_id for n in pending if n.plan_id == plan_id)
    result: Any = service.apply(plan_id, confirm=service.load_plan(plan_id).confirmation)
    assert 3 == result.count(Outcome.REQUESTED)  # applying again changes nothing


def test_the_page_refuses_a_post_without_its_csrf_token(site: tuple[str, Any]) -> None:
    """A form posted from elsewhere (no CSRF token) is refused and plans nothing."""
    base, service = site
    before = len(service.audit_events())
    form = b"member_id=d007&mode=request"
    post = urllib.request.Request(base + "/plans", data=form, method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(post, timeout=10)  # noqa: S310 (loopback)
    caught.value.close()
    assert 400 == caught.value.code
    assert before == len(service.audit_events())


def test_the_page_answers_bad_requests_with_400(site: tuple[str, Any]) -> None:
    """Odd JSON bodies and a non-ASCII CSRF token are 400s, never a server error."""
    import http.cookiejar
    import re

    base, _ = site
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(base + "/", timeout=10) as page:
        token = re.search(r'name="csrf" value="([^"]+)"', page.read().decode()).group(1)
    bodies = [b"[]", b'"x"', b'{"member_ids": null}', b'{"member_ids": [[1]]}', b"not json"]
    for body, csrf in [(b, token) for b in bodies] + [(b'{"member_ids": []}', "ü-token")]:
        post = urllib.request.Request(  # noqa: S310 (loopback)
            base + "/precautions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(post, timeout=10)
        caught.value.close()
        assert 400 == caught.value.code, body
