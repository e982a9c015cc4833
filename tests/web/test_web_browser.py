"""A real browser (Debian's Chromium, headless, driven by Playwright) against the real app
served over HTTP: sign in, claim, submit with a validation error, fix it, complete, and
the supervisor sees the next task. Screenshots go to ``test-output/``."""

from __future__ import annotations

import re

import pytest

from webtools import screenshot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]



def test_agent_completes_intake_supervisor_sees_approval(cf, live_server, browser):
    """The agent's whole round trip in Chinese, then the supervisor's inbox."""
    cf.start("simple_review", {"customer": "上海示例科技有限公司", "priority": "urgent"}, actor="test")
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    page = context.new_page()
    problems: list[str] = []  # script errors, CSP violations, failing scripts/styles/data
    page.on("console", lambda m: problems.append(f"{page.url}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: {e}"))
    page.on("response", lambda r: problems.append(f"{r.url}: {r.status}")
            if r.status >= 400 and r.request.resource_type != "document" else None)

    sign_in(page, live_server, "ann")
    row = page.locator("#inbox-table tbody tr").first
    assert "登记" in row.inner_text() and "上海示例科技有限公司" in row.inner_text()
    assert "剩余" in row.locator(".sla").inner_text()
    screenshot(page, "inbox.png", full_page=True)

    row.get_by_role("button", name="领取").click()
    page.wait_for_url(re.compile(r".*/tasks/[0-9a-f-]+$"))
    assert "任务已领取" in page.locator(".flashes").inner_text()
    assert page.input_value("#f-customer") == "上海示例科技有限公司"

    page.fill("#f-amount", "-5")
    page.fill("#f-email", "zhang@example.com")
    page.click("#complete-button")
    error = page.locator("#f-amount-error")
    error.wait_for()
    assert "不能小于 0" in error.inner_text()
    assert page.input_value("#f-amount") == "-5"  # input kept
    assert page.input_value("#f-email") == "zhang@example.com"
    assert page.locator(".field.has-error").count() == 1
    screenshot(page, "task.png", full_page=True)

    page.fill("#f-amount", "500")
    page.click("#complete-button")
    page.wait_for_url(re.compile(r".*/tasks$"))
    flashes = page.locator(".flashes").inner_text()
    assert "任务已完成" in flashes and "审批" in flashes
    assert page.locator("#inbox-table").count() == 0  # the agent has nothing left

    page.locator("form[action='/logout'] button").click()
    page.wait_for_url(re.compile(r".*/login$"))
    sign_in(page, live_server, "sam")
    row = page.locator("#inbox-table tbody tr").first
    assert "审批" in row.inner_text()
    row.get_by_role("link", name="审批").click()
    page.wait_for_url(re.compile(r".*/tasks/[0-9a-f-]+$"))
    page.locator("#claim-button").click()
    page.locator("label:has-text('是') input[type=radio]").check()
    page.click("#complete-button")
    page.wait_for_url(re.compile(r".*/tasks$"))
    assert "任务已完成" in page.locator(".flashes").inner_text()

    page.goto(live_server + "/instances/1")
    page.wait_for_selector("#diagram[data-rendered=true]", timeout=15_000)
    assert page.locator("#diagram .djs-element.cf-done").count() >= 3
    assert "任务已领取" in page.locator("#history").inner_text()
    screenshot(page, "instance.png", full_page=True)
    assert not problems, problems  # no script errors, no CSP violations
    context.close()


def test_english_and_stale_task(cf, live_server, browser):
    """An English browser gets English; a task completed elsewhere is explained, not a crash."""
    result = cf.start("simple_review", {"customer": "ACME"}, actor="test")
    task_id = result.ready_tasks[0]["id"]
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    sign_in(page, live_server, "ann")
    assert "My inbox" in page.content()
    page.goto(f"{live_server}/tasks/{task_id}")
    page.locator("#claim-button").click()
    page.fill("#f-amount", "5")
    from engine import inbox

    cf.complete(task_id, {"customer": "ACME", "amount": 5}, user="ann")  # e.g. from another tab
    assert inbox.get_task_row(cf, task_id)["status"] == "completed"
    page.click("#complete-button")
    assert "This task is no longer open" in page.content()
    assert "already completed by ann" in page.content()
    page.goto(live_server + "/no/such/page")
    assert "Not found" in page.content() and "Traceback" not in page.content()
    context.close()


def test_customer_answers_the_survey_on_a_phone(cf, live_server, browser):
    """The customer's survey link on a phone-size screen: stars by their accessible names, a missing
    score marked, then the thank-you page; no script errors or CSP violations."""
    from engine.customers import add_customer, credit_code_check_char
    from engine.surveys import create_survey_link

    first = "91310115000000001"
    with cf.Session() as s, s.begin():
        cid = add_customer(s, {"customer_type": "enterprise", "name": "上海示例科技有限公司",
                               "credit_code": first + credit_code_check_char(first), "phone": "13900000001"},
                           pm=cf.pm, actor="test").id
    token = create_survey_link(cf, cid, ticket_number="SN20260302001", actor="test")["token"]
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, locale="zh-CN")
    page = context.new_page()
    problems: list[str] = []  # script errors, CSP violations, failing styles (400/410 pages are expected)
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.url}: {r.status}")
            if r.status >= 400 and r.request.resource_type != "document" else None)
    page.goto(f"{live_server}/survey/{token}")
    assert "上海示例科技有限公司" in page.locator(".sv-about").inner_text()
    for dim, score in (("response_speed", "4 – 满意"), ("resolution_efficiency", "5 – 非常满意"),
                       ("engineer_expertise", "3 – 一般")):
        page.locator(f"#f-{dim}").get_by_role("radio", name=score).check()
    page.locator("#f-engineer_expertise summary").click()
    page.fill("#f-engineer_expertise_suggestion", "希望工程师讲解更详细")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    screenshot(page, "survey.png", full_page=True)
    page.click("#survey-submit")
    page.locator("#f-overall-error").wait_for()
    assert page.locator("#f-resolution_efficiency").get_by_role("radio", name="5 – 非常满意").is_checked()
    assert page.input_value("#f-engineer_expertise_suggestion") == "希望工程师讲解更详细"
    page.locator("#f-overall").get_by_role("radio", name="5 – 非常满意").check()
    page.click("#survey-submit")
    page.locator("#survey-thanks").wait_for()
    assert "感谢您的反馈" in page.locator("h1").inner_text()
    page.goto(f"{live_server}/survey/{token}")
    assert "此调查已提交" in page.locator("h1").inner_text()
    assert not problems, problems
    context.close()
