"""Who may see and do what: one place for every authorization decision of the web UI and API.

Roles (domain.md): an *agent* works on their own tasks and their groups' unassigned
tasks; a *supervisor* sees everything of their groups and of the people reporting to
them and reassigns; a *process owner* and an *admin* see everything; an *auditor* reads
everything and changes nothing. Objects a user may not see answer 404 (their existence
is not revealed); actions on visible objects the user may not take answer 403.

The audit trail (issue #9) is read by auditors and admins only: it holds every team's
steps, user administration and personal-data events, more than a supervisor (their teams)
or a process owner (processes and instances, whose step history the instance page shows)
may see. Auditors and admins may also *verify* the chain: that changes no business data,
it records the check (``audit_verifications``, and an incident when broken) — the auditor's
own duty (domain.md: "verifies they were not altered"). Personal data is unmasked only by
roles ``engine.pii.can_unmask`` allows (admins), deliberately and audited.

The auditor's "changes nothing" is also enforced in one place for every route, present and
future (``refuses_change``): any request other than GET/HEAD/OPTIONS by a read-only user is
refused with 403 before the view runs, except the endpoints in ``READ_ONLY_MAY_POST``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.accounts import Account
from engine.inbox import Scope
from engine.pii import can_unmask as _role_may_unmask

WIDE_ROLES = frozenset({"process_owner", "auditor", "admin"})
WORKER_ROLES = frozenset({"agent", "supervisor"})
PII_ROLES = frozenset({"agent", "supervisor", "admin"})
AUDIT_ROLES = frozenset({"auditor", "admin"})
MODEL_ROLES = frozenset({"process_owner", "admin"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a read-only user may still POST: their own session (sign in/out, language) and
# verifying the audit chain (a check that changes no business data; see the module docstring).
READ_ONLY_MAY_POST = frozenset({"auth.login", "auth.logout", "auth.language", "audit.verify"})


@dataclass
class Principal:
    """The signed-in user as authorization sees them (account + reports)."""

    account: Account
    reports: list[str] = field(default_factory=list)

    @property
    def username(self) -> str:
        """The username."""
        return self.account.username

    @property
    def role(self) -> str:
        """The role."""
        return self.account.role

    @property
    def groups(self) -> list[str]:
        """The user's groups (BPMN lanes)."""
        return self.account.groups

    @property
    def sees_everything(self) -> bool:
        """Process owners, auditors and admins read every object."""
        return self.role in WIDE_ROLES

    @property
    def read_only(self) -> bool:
        """Auditors change nothing."""
        return self.role == "auditor"

    def scope(self) -> Scope:
        """The inbox scope of this user."""
        return Scope(username=self.username, groups=list(self.groups), reports=list(self.reports),
                     everything=self.sees_everything, whole_groups=self.role == "supervisor")

    def default_view(self) -> str:
        """The inbox view a user lands on."""
        if self.role == "supervisor":
            return "team"
        if self.sees_everything:
            return "all"
        return "inbox"

    def views(self) -> list[str]:
        """The inbox views this user may choose."""
        if self.role == "agent":
            return ["inbox", "mine", "groups"]
        if self.role == "supervisor":
            return ["team", "inbox", "mine", "groups"]
        return ["all"]


def can_see_task(p: Principal, task: dict) -> bool:
    """May ``p`` see this task (a row dict from ``engine.inbox``)?"""
    if p.sees_everything:
        return True
    assignee = task.get("assignee")
    if assignee == p.username or task.get("completed_by") == p.username:
        return True
    in_group = task.get("group") in p.groups
    if p.role == "agent":
        return in_group and assignee is None and task.get("status") == "ready"
    if p.role == "supervisor":
        return in_group or (assignee is not None and assignee in p.reports) \
            or (task.get("completed_by") is not None and task.get("completed_by") in p.reports)
    return False


def can_complete(p: Principal, task: dict) -> bool:
    """May ``p`` submit the task's form? Only the holder of an open task, in a working role."""
    return p.role in WORKER_ROLES | {"admin"} and task.get("assignee") == p.username


def can_claim(p: Principal, task: dict) -> bool:
    """May ``p`` take this task? Unassigned, open, in one of their groups."""
    return (p.role in WORKER_ROLES and task.get("status") == "ready" and task.get("assignee") is None
            and task.get("group") in p.groups)


def can_release(p: Principal, task: dict) -> bool:
    """May ``p`` give the task back to its group? Its holder, or whoever may reassign it."""
    if task.get("status") != "ready" or task.get("assignee") is None:
        return False
    return (task.get("assignee") == p.username and p.role in WORKER_ROLES) or can_reassign(p, task)


def can_reassign(p: Principal, task: dict) -> bool:
    """May ``p`` give the task to someone else? Supervisors of its group or holder, and admins."""
    if task.get("status") != "ready":
        return False
    if p.role == "admin":
        return True
    if p.role != "supervisor":
        return False
    return task.get("group") in p.groups or (task.get("assignee") is not None and task.get("assignee") in p.reports)


def can_see_instance(p: Principal, instance: dict, tasks: list[dict]) -> bool:
    """May ``p`` see an instance: role-wide, started it, or sees any of its tasks."""
    if p.sees_everything or instance.get("started_by") == p.username:
        return True
    return any(can_see_task(p, t) for t in tasks)


def can_start(p: Principal) -> bool:
    """May ``p`` start process instances (through the API)?"""
    return p.role in {"agent", "supervisor", "process_owner", "admin"}


def may_see_pii(p: Principal) -> bool:
    """Does the role see customers' phone numbers and e-mails unmasked (where it sees the customer)?"""
    return p.role in PII_ROLES


def can_read_audit(p: Principal | None) -> bool:
    """May ``p`` open the audit pages (search, per-instance history, masked exports)?"""
    return p is not None and p.role in AUDIT_ROLES


def can_verify_audit(p: Principal | None) -> bool:
    """May ``p`` run a verification of the audit chain (recorded, changes no business data)?"""
    return can_read_audit(p)


def can_unmask(p: Principal | None) -> bool:
    """May ``p`` reveal personal data in the audit trail (a deliberate, audited action)?"""
    return can_read_audit(p) and _role_may_unmask(p.role)


def refuses_change(p: Principal | None, method: str, endpoint: str | None) -> bool:
    """Must this request be refused because a read-only user (auditor) would change something?"""
    return (p is not None and p.read_only and method.upper() not in SAFE_METHODS
            and endpoint not in READ_ONLY_MAY_POST)


def can_view_processes(p: Principal | None) -> bool:
    """May ``p`` read process models: the version list, diagrams and diffs (process owners,
    auditors and admins)?"""
    return p is not None and p.role in WIDE_ROLES


def can_model(p: Principal | None) -> bool:
    """May ``p`` edit, upload and deploy process versions and migrate instances between them?"""
    return p is not None and p.role in MODEL_ROLES


def can_admin(p: Principal) -> bool:
    """May ``p`` manage users?"""
    return p.role == "admin"


def report_teams(p: Principal, teams: list[str]) -> list[str | None]:
    """The teams whose monthly reports ``p`` may see (``None`` = every team).

    Process owners, auditors and admins: every team and all teams together; supervisors and
    agents: their own groups only (the ``supervisor`` group last).
    """
    if p.sees_everything:
        return [None, *teams]
    if p.role in WORKER_ROLES:
        return sorted(p.groups, key=lambda g: g == "supervisor")
    return []
