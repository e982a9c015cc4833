"""The customer's satisfaction survey page (``/survey/<token>``): no sign-in, a signed link that
works once and expires, field errors with the input kept, both languages, CSRF and rate limits,
the supervisor's follow-up after a low score; and the agent's button that creates a link."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from engine.clock import FrozenClock, use_clock
from engine.customers import add_customer, credit_code_check_char
from engine.surveys import SurveyLink, SurveyResponse, create_survey_link

from webtools import ROOT, AuthActions, make_app, start_simple

GOOD = {"response_speed": "5", "resolution_efficiency": "4", "engineer_expertise": "5", "overall": "4",
        "overall_suggestion": "工程师很专业，希望周末也能上门"}
LOW = {"response_speed": "2", "resolution_efficiency": "1", "engineer_expertise": "3", "overall": "2",
       "response_speed_suggestion": "等了两天才有人回电"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _enterprise(cf, n: int = 1, **extra) -> int:
    first = f"91110108{n:09d}"
    data = {"customer_type": "enterprise", "name": f"上海示例科技有限公司{n}号", "credit_code": first +
            credit_code_check_char(first), "phone": f"139{n:08d}", "email": f"it{n}@example.com",
            "contact_person": "王建国", **extra}
    with cf.Session() as s, s.begin():
        return add_customer(s, data, pm=cf.pm, actor="test", now=cf.now()).id


def _link(cf, cid: int, **kwargs) -> str:
    return create_survey_link(cf, cid, actor="test", **kwargs)["token"]


def _token_of(client, path: str) -> str:
    """The CSRF token of the client's session, as the survey page carries it."""
    return _CSRF.search(client.get(path).get_data(as_text=True)).group(1)


def _post(client, token: str, data: dict, **kwargs):
    return client.post(f"/survey/{token}", data={"csrf_token": _token_of(client, f"/survey/{token}"), **data},
                       **kwargs)


def _responses(cf) -> int:
    with cf.Session() as s:
        return s.scalar(select(func.count()).select_from(SurveyResponse))


def _text(response) -> str:
    return response.get_data(as_text=True)


def test_a_valid_link_shows_the_form_without_sign_in(client, cf):
    """Chinese by default: the four dimensions as 1-5 star choices, the ticket and company, no personal data."""
    token = _link(cf, _enterprise(cf), ticket_number="SN20260302001")
    r = client.get(f"/survey/{token}")
    html = _text(r)
    assert r.status_code == 200, html
    for text in ("客户满意度调查表", "响应速度", "解决效率", "工程师专业度", "整体满意度", "1 – 非常不满意",
                 "5 – 非常满意", "上海示例科技有限公司1号", "SN20260302001", "提交"):
        assert text in html, text
    assert html.count('type="radio"') == 20
    for dim in ("response_speed", "resolution_efficiency", "engineer_expertise", "overall"):
        assert len(re.findall(rf'name="{dim}" value="[1-5]"', html)) == 5
        assert f'name="{dim}_suggestion"' in html
    assert "13900000001" not in html and "139****0001" not in html and "example.com" not in html
    assert "王建国" not in html and "/login" not in html and "/tasks" not in html
    assert 'name="csrf_token"' in html and "<script" not in html and "style=" not in html
    assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Robots-Tag"].startswith("noindex") and r.headers["Cache-Control"] == "no-store"


def test_english_and_the_language_switch(client, cf):
    """An English browser gets English; the switch on the page changes the language without signing in."""
    token = _link(cf, _enterprise(cf), ticket_number="SN20260302001")
    html = _text(client.get(f"/survey/{token}", headers={"Accept-Language": "en-US,en;q=0.9"}))
    for text in ("Customer satisfaction survey", "Response speed", "Resolution efficiency", "Engineer expertise",
                 "Overall satisfaction", "5 – very satisfied", "Submit"):
        assert text in html, text
    assert "响应速度" not in html
    r = client.post("/language", data={"lang": "en", "next": f"/survey/{token}",
                                       "csrf_token": _token_of(client, f"/survey/{token}")})
    assert r.status_code == 302 and r.headers["Location"] == f"/survey/{token}"
    assert "Response speed" in _text(client.get(f"/survey/{token}", headers={"Accept-Language": "zh-CN"}))


def test_a_link_works_once(client, cf):
    """The answers are stored once; afterwards the page and a second post say it was already answered."""
    cid = _enterprise(cf)
    token = _link(cf, cid, ticket_number="SN20260302001")
    r = _post(client, token, GOOD)
    html = _text(r)
    assert r.status_code == 200 and "感谢您的反馈" in html and "SN20260302001" in html, html
    assert "主管" not in html  # a good score starts no follow-up
    with cf.Session() as s:
        resp = s.scalar(select(SurveyResponse))
        assert (resp.customer_id, resp.channel, resp.taken_by, resp.ticket_number) == (
            cid, "link", "customer", "SN20260302001")
        assert (resp.response_speed, resp.resolution_efficiency, resp.engineer_expertise, resp.overall) == (
            5, 4, 5, 4)
        assert resp.suggestions == {"overall": "工程师很专业，希望周末也能上门"}
        assert resp.followup_instance_id is None
    again = client.get(f"/survey/{token}")
    assert again.status_code == 410 and "此调查已提交" in _text(again) and "感谢您的反馈" in _text(again)
    again = _post(client, token, LOW, headers={"Accept-Language": "en"})
    assert again.status_code == 410 and "already answered on" in _text(again)
    assert 'data-reason="used"' in _text(again) and 'name="overall"' not in _text(again)
    assert _responses(cf) == 1
    assert cf.tasks() == []


def test_an_expired_link_says_so_with_the_date(client, cf):
    """After its expiry the link shows when it expired, in both languages, and stores nothing."""
    clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))  # 10:00 in Shanghai
    with use_clock(clock):
        token = _link(cf, _enterprise(cf), expires_in="PT48H")
        clock.advance(timedelta(hours=47, minutes=59))
        assert client.get(f"/survey/{token}").status_code == 200
        clock.advance(timedelta(minutes=1))
        r = client.get(f"/survey/{token}")
        assert r.status_code == 410
        assert "此链接已过期" in _text(r) and "已于 2026-03-04 10:00（北京时间）过期" in _text(r)
        r = client.get(f"/survey/{token}", headers={"Accept-Language": "en"})
        assert "This link has expired" in _text(r) and "expired on 2026-03-04 10:00 (China time)" in _text(r)
        r = _post(client, token, GOOD)
        assert r.status_code == 410 and "此链接已过期" in _text(r)
    assert _responses(cf) == 0


@pytest.mark.parametrize("mangle", ["signature", "expiry", "id", "garbage"])
def test_a_tampered_link_is_not_valid(client, cf, mangle):
    """Changed signature, a longer expiry, another id or junk: 'not valid', 404, nothing stored, no traceback."""
    token = _link(cf, _enterprise(cf), expires_in="PT1H")
    link_id, expiry, signature = token.split(".")
    bad = {"signature": f"{link_id}.{expiry}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
           "expiry": f"{link_id}.{int(expiry) + 86400}.{signature}",
           "id": f"{link_id[:-1]}{'A' if link_id[-1] != 'A' else 'B'}.{expiry}.{signature}",
           "garbage": "1' OR '1'='1"}[mangle]
    for lang, title in (("zh", "此链接无效"), ("en", "This link is not valid")):
        r = client.get(f"/survey/{bad}", headers={"Accept-Language": lang})
        assert r.status_code == 404 and title in _text(r) and "Traceback" not in _text(r)
        assert "上海示例科技有限公司" not in _text(r)
    r = client.post(f"/survey/{bad}", data={"csrf_token": _token_of(client, f"/survey/{token}"), **GOOD})
    assert r.status_code == 404 and "此链接无效" in _text(r)
    assert _responses(cf) == 0
    assert client.get(f"/survey/{token}").status_code == 200  # the real link still works


def test_a_low_score_starts_the_supervisor_follow_up(client, cf):
    """Overall <= 2: a ready follow-up task in the supervisor lane, for the account manager's supervisor."""
    cf.deploy([ROOT / "workflows" / "satisfaction_followup.bpmn"], author="test")
    token = _link(cf, _enterprise(cf, account_manager="ann"), ticket_number="SN20260302007")
    r = _post(client, token, LOW)
    assert r.status_code == 200 and "感谢您的反馈" in _text(r) and "主管将与您联系跟进" in _text(r)
    (task,) = cf.tasks(status="ready")
    assert (task["lane"], task["assignee"]) == ("supervisor", "sam")
    assert "等了两天才有人回电" in task["instructions"] and "SN20260302007" in task["instructions"]
    with cf.Session() as s:
        assert s.scalar(select(SurveyResponse.followup_instance_id)) == task["instance_id"]


@pytest.mark.parametrize("lang,message", [("zh", "请选择 1 分（非常不满意）至 5 分（非常满意）。"),
                                          ("en", "Choose a score from 1 (very dissatisfied) to 5 (very satisfied).")])
def test_invalid_answers_show_field_errors_with_the_input_kept(client, cf, lang, message):
    """A score of 6 and a missing score are marked at their fields; what was typed and chosen stays."""
    token = _link(cf, _enterprise(cf))
    headers = {"Accept-Language": lang}
    data = {"response_speed": "6", "resolution_efficiency": "4", "engineer_expertise": "3",
            "engineer_expertise_suggestion": "希望讲解更耐心 <b>", "comments": "谢谢"}
    r = _post(client, token, data, headers=headers)
    html = _text(r)
    assert r.status_code == 400
    assert len(re.findall(r'<ul class="field-error" id="f-(\w+)-error">', html)) == 2
    for dim in ("response_speed", "overall"):
        error = re.search(rf'<ul class="field-error" id="f-{dim}-error"><li>([^<]+)</li></ul>', html)
        assert error and error.group(1) == message, dim
    assert re.search(r'name="resolution_efficiency" value="4" checked', html)
    assert re.search(r'name="engineer_expertise" value="3" checked', html)
    assert "希望讲解更耐心 &lt;b&gt;</textarea>" in html and "谢谢</textarea>" in html
    assert re.search(r'<details class="sv-more" open>\s*<summary>[^<]+</summary>\s*<div class="field">\s*'
                     r'<label for="f-engineer_expertise_suggestion"', html)
    too_long = {**GOOD, "overall_suggestion": "长" * 1001}
    r = _post(client, token, too_long, headers=headers)
    assert r.status_code == 400 and 'id="f-overall_suggestion-error"' in _text(r)
    assert _responses(cf) == 0
    with cf.Session() as s:
        assert s.scalar(select(SurveyLink.used_at)) is None  # a failed attempt does not use up the link
    assert _post(client, token, GOOD).status_code == 200


def test_posting_needs_the_csrf_token(app, client, cf):
    """CSRF protection is on in the tests too: a post without (or with a wrong) token is refused, nothing stored."""
    assert app.config.get("WTF_CSRF_ENABLED", True) is True
    token = _link(cf, _enterprise(cf))
    for form in (dict(GOOD), {**GOOD, "csrf_token": "forged"}):
        r = client.post(f"/survey/{token}", data=form)
        assert r.status_code == 400 and "此页面已过期" in _text(r) and "请刷新页面后重试" in _text(r)
        assert "/login" not in _text(r)
    other = app.test_client()  # a token from another browser's session does not count either
    r = client.post(f"/survey/{token}", data={**GOOD, "csrf_token": _token_of(other, f"/survey/{token}")})
    assert r.status_code == 400
    assert _responses(cf) == 0
    assert _post(client, token, GOOD).status_code == 200


def test_bad_links_are_rate_limited_per_address(cf):
    """Like sign-in: after too many bad links from one address, that address waits (429), even with a good link."""
    from webtools import add_users

    add_users(cf)
    app = make_app(cf, CAREFLOW_LOGIN_MAX_FAILURES_PER_IP=3, CAREFLOW_LOGIN_WINDOW=600)
    client = app.test_client()
    token = _link(cf, _enterprise(cf))
    for i in range(3):
        assert client.get(f"/survey/bad{i}").status_code == 404
    assert client.get(f"/survey/{token}").status_code == 429
    r = client.get(f"/survey/{token}", headers={"Accept-Language": "en"})
    assert r.status_code == 429 and "Please wait 10 minutes" in _text(r) and r.headers["Retry-After"] == "600"
    other = app.test_client()
    r = other.get(f"/survey/{token}", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200  # another address is not affected
    assert _responses(cf) == 0


def test_a_signed_in_agent_can_open_the_link_too(client, login, cf):
    """The agent taking the survey on the phone opens the same link; the answers are stored once."""
    token = _link(cf, _enterprise(cf))
    login.login("ann")
    assert _post(client, token, GOOD).status_code == 200
    assert _responses(cf) == 1


def test_agent_creates_a_link_on_the_customer_page(client, login, cf):
    """An agent serving the customer creates a link (POST + CSRF) and sees it once, ready to copy."""
    cid = _enterprise(cf)
    start_simple(cf, customer_id=str(cid))
    login.login("ann")
    page = _text(client.get(f"/customers/{cid}"))
    assert 'id="survey-link-button"' in page and 'id="survey-link-url"' not in page
    assert "/static/js/copy.js" in page
    r = login.post(f"/customers/{cid}/survey-link", {"ticket_number": "SN20260302001"})
    assert r.status_code == 302 and r.headers["Location"] == f"/customers/{cid}"
    page = _text(client.get(f"/customers/{cid}"))
    url = re.search(r'id="survey-link-url" class="mono" value="([^"]+)" readonly', page).group(1)
    assert url.startswith("http://localhost:5000/survey/") and "调查链接已生成" in page
    assert 'id="survey-link-url"' not in _text(client.get(f"/customers/{cid}"))  # shown once
    token = url.rsplit("/", 1)[1]
    with cf.Session() as s:
        link = s.scalar(select(SurveyLink))
        assert (link.customer_id, link.ticket_number, link.created_by) == (cid, "SN20260302001", "ann")
    login.logout()
    survey = client.get(f"/survey/{token}")
    assert survey.status_code == 200 and "SN20260302001" in _text(survey)


def test_who_may_create_survey_links(app, cf):
    """Agents and supervisors who serve the customer; others who see it get no button and 403; others 404."""
    cid = _enterprise(cf)
    start_simple(cf, customer_id=str(cid))
    for user, status in (("sam", 302), ("olga", 403), ("aud", 403), ("root", 403), ("tom", 404)):
        client = app.test_client()
        auth = AuthActions(client)
        auth.login(user)
        page = client.get(f"/customers/{cid}")
        assert ('id="survey-link-button"' in _text(page)) == (status == 302), user
        assert auth.post(f"/customers/{cid}/survey-link").status_code == status, user
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(SurveyLink)) == 1
    client = app.test_client()
    auth = AuthActions(client)
    auth.login("ann")
    r = auth.post(f"/customers/{cid}/survey-link", {"ticket_number": "SN 2026; <script>"})
    assert r.status_code == 302 and "工单号只能包含字母" in _text(client.get(f"/customers/{cid}"))
    assert client.post(f"/customers/{cid}/survey-link", data={}).status_code == 400  # no CSRF token
    assert auth.post("/customers/987654/survey-link").status_code == 404
    with cf.Session() as s:
        assert s.scalar(select(func.count()).select_from(SurveyLink)) == 1
