"""Demo step 2: one or more users per role, in the groups the shipped workflows' lanes use,
with supervisors set; prints the sign-in names and the demo password.

The password is ``CAREFLOW_DEMO_PASSWORD`` when set, else ``careflow-demo``: demo data is
for trying Careflow out, never for production.
"""

from __future__ import annotations

import os

ORDER = 20
DEFAULT_PASSWORD = "careflow-demo"

# username, display name, role, groups, supervisor
DEMO_USERS = [
    ("admin", "系统管理员", "admin", [], None),
    ("li.na", "李娜（客服主管）", "supervisor", ["customer_service", "supervisor"], None),
    ("chen.jie", "陈杰（技术支持主管）", "supervisor", ["technical_support", "supervisor"], None),
    ("zhang.wei", "张伟（客服专员）", "agent", ["customer_service"], "li.na"),
    ("wang.fang", "王芳（售后专员）", "agent", ["customer_service"], "li.na"),
    ("liu.yang", "刘洋（技术支持工程师）", "agent", ["technical_support"], "chen.jie"),
    ("zhao.min", "赵敏（客户经理）", "agent", ["account_manager", "sales"], "li.na"),
    ("sun.li", "孙丽（流程负责人）", "process_owner", [], None),
    ("zhou.qiang", "周强（审计）", "auditor", [], None),
]


def seed(engine, echo) -> None:
    """Create the demo users that do not exist yet and print how to sign in."""
    from engine import accounts

    password = os.environ.get("CAREFLOW_DEMO_PASSWORD") or DEFAULT_PASSWORD
    existing = {a.username for a in accounts.list_accounts(engine)}
    added = 0
    for username, display, role, groups, supervisor in DEMO_USERS:
        if username in existing:
            continue
        accounts.add_user(engine, username, role=role, password=password, groups=groups, supervisor=supervisor,
                          display_name=display, actor="demo")
        added += 1
    echo(f"Demo users: {added} added, {len(DEMO_USERS) - added} already there. "
         f"Sign in with any of them, password '{password}':")
    for username, display, role, groups, _sup in DEMO_USERS:
        where = f" [{', '.join(groups)}]" if groups else ""
        echo(f"  {username:<11} {role:<14}{where}  {display}")
