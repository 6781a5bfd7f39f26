"""The reports dashboard in a real browser (headless Debian Chromium driven by
Selenium): an analyst logs in, builds a report over a range, and sees its charts drawn
with nothing fetched from the internet."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth import get_user_model

from stt.models import ErrorEvent, SessionRecord, Utterance
from tests.servers import headless_chromium

pytestmark = pytest.mark.django_db(transaction=True)

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)
PASSWORD = "s3cret-pass-phrase"


@pytest.fixture
def browser():
    session = headless_chromium()
    yield session
    session.quit()


def shown(browser, element_id: str):
    """The element once the page that has it has loaded (clicks navigate asynchronously)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, 20).until(expected_conditions.presence_of_element_located((By.ID, element_id)))



def test_an_analyst_builds_a_report_and_sees_its_charts(live_server, browser, eager_celery, tmp_path):
    get_user_model().objects.create_superuser("analyst", "analyst@example.com", PASSWORD)
    session = SessionRecord.objects.create(session_id="s", started_at=DAY + timedelta(hours=8))
    for index in range(5):
        Utterance.objects.create(utterance_id=uuid.uuid4(), session=session, text=f"u{index}", start_ms=0,
                                 end_ms=3000, audio_duration_ms=3000, first_partial_latency_ms=150,
                                 final_latency_ms=400 + 100 * index, created_at=DAY + timedelta(hours=8 + index % 2))
    ErrorEvent.objects.create(code="audio_not_finite", category="audio_format", severity="low", recoverable=True,
                              message="NaN", created_at=DAY + timedelta(hours=9))

    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}/admin/login/?next=/admin/stt/report/dashboard/")
    browser.find_element(By.NAME, "username").send_keys("analyst")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert shown(browser, "no-report")

    for name, value in (("start", "2026-11-20T00:00"), ("end", "2026-11-21T00:00")):
        field = browser.find_element(By.NAME, name)
        browser.execute_script("arguments[0].value = arguments[1]", field, value)
    browser.find_element(By.CSS_SELECTOR, "form.build-report input[type=submit]").click()

    assert shown(browser, "figure-utterances").text == "5"
    charts = browser.find_elements(By.CSS_SELECTOR, "svg[role=img]")
    assert len(charts) == 3
    heights = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg[role=img]')).map("
        "svg => Array.from(svg.querySelectorAll('rect.bar')).map(r => r.getBoundingClientRect().height))")
    hours, latencies, errors = heights
    assert [i for i, h in enumerate(hours) if h > 0] == [8, 9], "bars drawn at the busy hours only"
    assert all(h > 0 for h in latencies) and errors[0] > 0
    external = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith(location.origin))")
    assert external == [], "nothing is fetched from outside the service"
    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
