"""Demo step 3: a dozen customers across every tier (enterprises and individuals, valid credit
codes, ID numbers and phones), then the revisits that are due start for their account manager."""

from __future__ import annotations

from datetime import timedelta

ORDER = 30

# Account manager zhao.min and supervisor li.na come from careflow/demo/users.py.
DEMO_CUSTOMERS: list[dict] = [
    {"customer_type": "enterprise", "name": "北京华联精密机械有限公司", "industry": "C34",
     "credit_code": "91110108102345675J", "contact_person": "王建国", "contact_title": "总经理",
     "phone": "139 0123 4567", "email": "wangjg@hualian-jx.cn", "source": "exhibition",
     "need_types": ["product_purchase", "after_sales_service"], "annual_spend": 360000, "strategic_value": "A",
     "first_contact_date": "2021-03-02", "signing_date": "2021-03-18", "account_manager": "zhao.min",
     "notes": "数控机床主要客户，每季度采购一次备件。"},
    {"customer_type": "enterprise", "name": "上海鼎信软件科技有限公司", "industry": "I65",
     "credit_code": "91310115320786540T", "contact_person": "陈晓雯", "contact_title": "IT 主管",
     "phone": "021-58881234", "email": "chenxw@dingxin-soft.com", "source": "referral",
     "need_types": ["technical_consultation", "after_sales_service"], "annual_spend": 68000, "strategic_value": "B",
     "first_contact_date": "2022-06-15", "signing_date": "2022-07-01", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "深圳市启航电子有限公司", "industry": "C39",
     "credit_code": "914403001928374617", "contact_person": "刘志强", "contact_title": "采购经理",
     "phone": "+86 138-2345-6789", "email": "liuzq@qihang-e.com", "source": "online_promotion",
     "need_types": ["product_purchase"], "annual_spend": 152000, "strategic_value": "A",
     "first_contact_date": "2020-11-20", "signing_date": "2020-12-08", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "杭州绿源环保科技有限公司", "industry": "N77",
     "credit_code": "91330106704512362Q", "contact_person": "周敏", "contact_title": "行政经理",
     "phone": "0571-87651234", "email": "zhoumin@lvyuan-eco.cn", "source": "online_promotion",
     "need_types": ["after_sales_service"], "annual_spend": 18000, "strategic_value": "C",
     "first_contact_date": "2023-04-10", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "成都天府物流有限公司", "industry": "G54",
     "credit_code": "91510107209834516T", "contact_person": "杨帆", "contact_title": "运营总监",
     "phone": "13708012345", "email": "yangfan@tianfu-wl.com", "source": "exhibition",
     "need_types": ["product_purchase", "cooperation_inquiry"], "annual_spend": 45000, "strategic_value": "B",
     "first_contact_date": "2022-09-05", "signing_date": "2022-10-12", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "广州粤海餐饮管理有限公司", "industry": "H62",
     "credit_code": "91440106618273641W", "contact_person": "黄嘉欣", "contact_title": "店长",
     "phone": "020-38761234", "email": "huangjx@yuehai-cy.com", "source": "referral",
     "need_types": ["after_sales_service"], "annual_spend": 12500, "strategic_value": "C",
     "first_contact_date": "2023-08-21", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "武汉光谷生物医药有限公司", "industry": "C27",
     "credit_code": "91420111305928176T", "contact_person": "吴博", "contact_title": "研发部经理",
     "phone": "15927654321", "email": "wubo@ovbio.cn", "source": "online_promotion",
     "need_types": ["technical_consultation"], "has_inquiries": True, "strategic_value": "B",
     "first_contact_date": "2024-02-26", "account_manager": "zhao.min",
     "notes": "咨询实验室设备的售后维保方案，尚未采购。"},
    {"customer_type": "enterprise", "name": "南京金陵建设工程有限公司", "industry": "E48",
     "credit_code": "91320106135792463Q", "contact_person": "孙海涛", "contact_title": "设备部部长",
     "phone": "025-84561234", "email": "sunht@jinling-js.com", "source": "exhibition",
     "need_types": ["product_purchase", "after_sales_service"], "annual_spend": 520000, "strategic_value": "A",
     "first_contact_date": "2019-05-13", "signing_date": "2019-06-03", "account_manager": "zhao.min"},
    {"customer_type": "individual", "name": "张丽华", "id_number": "110105198503152348",
     "phone": "136 1234 5678", "email": "zhanglihua@163.com", "source": "referral",
     "need_types": ["after_sales_service"], "annual_spend": 15000, "strategic_value": "C",
     "first_contact_date": "2023-11-02", "account_manager": "zhao.min"},
    {"customer_type": "individual", "name": "李明", "id_number": "310104199107204519",
     "phone": "13512349876", "email": "liming91@qq.com", "source": "online_promotion",
     "need_types": ["product_purchase", "technical_consultation"], "annual_spend": 32000, "strategic_value": "B",
     "first_contact_date": "2024-01-15", "signing_date": "2024-01-20", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "西安秦川仪器仪表有限公司", "industry": "C40",
     "credit_code": "916101132244668899", "contact_person": "马俊", "contact_title": "总工程师",
     "phone": "029-88451234", "source": "exhibition", "need_types": ["cooperation_inquiry"],
     "has_inquiries": True, "strategic_value": "B", "first_contact_date": "2024-05-08", "account_manager": "zhao.min"},
    {"customer_type": "enterprise", "name": "苏州工业园区智造科技有限公司", "industry": "C35",
     "credit_code": "913205715512890318", "contact_person": "徐静", "contact_title": "供应链总监",
     "phone": "18912340000", "email": "xujing@sz-zhizao.com", "source": "referral",
     "need_types": ["product_purchase", "after_sales_service", "technical_consultation"], "annual_spend": 88000,
     "strategic_value": "A", "first_contact_date": "2021-09-09", "signing_date": "2021-10-15",
     "account_manager": "zhao.min"},
]


def seed(engine, echo) -> None:
    """Add the demo customers that are not there yet (matched by credit code, ID number or phone)."""
    from engine.customers import add_customer, find_duplicates, local_today, record_contact, validate_customer
    from engine.errors import NotFound
    from engine.revisits import reschedule, start_due_revisits

    added = 0
    with engine.Session() as session, session.begin():
        now = engine.now()
        for data in DEMO_CUSTOMERS:
            if find_duplicates(session, validate_customer(data, local_today(now))):
                continue
            c = add_customer(session, data, pm=engine.pm, actor="demo", now=now)
            if c.revisit_due_at and c.revisit_due_at < now - timedelta(days=60):
                # a revisit some weeks ago (recorded, as every contact is), so a few, not all, are due today
                at = now - timedelta(days=20 + 7 * (added % 4))
                record_contact(session, c.id, "revisit", "上次回访（系统上线前）/ Last revisit before Careflow",
                               by="zhao.min", at=at)
                c.last_revisit_at = at
                reschedule(c, now)
            added += 1
    echo(f"Demo customers: {added} added, {len(DEMO_CUSTOMERS) - added} already there.")
    try:
        started = start_due_revisits(engine)
    except NotFound:
        echo("  (customer_revisit is not deployed: no revisits started)")
        return
    if started:
        echo(f"  {len(started)} revisit(s) due now started for their account manager (careflow tasks --user zhao.min)")
