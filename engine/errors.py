"""Exceptions the engine raises to its callers (CLI, web, plugins).

Each carries a message a person can act on; callers map them to exit codes or HTTP
statuses (see ``careflow.cli`` and ``web``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class CareflowError(Exception):
    """Base class of every error the engine reports on purpose."""


@dataclass
class Problem:
    """One thing wrong with a deployment or a submission, located as precisely as known."""

    message: str
    file: str | None = None
    element_id: str | None = None
    line: int | None = None
    hint: str | None = None
    field: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready form, without empty keys."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p)
        parts = [where] if where else []
        if self.element_id:
            parts.append(f"element '{self.element_id}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        text = (" ".join(parts) + ": " if parts else "") + self.message
        return text + (f" ({self.hint})" if self.hint else "")


class DeployError(CareflowError):
    """The files given to deploy are not a valid, executable process bundle."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class ValidationFailed(CareflowError):
    """Submitted data does not satisfy the task's form schema; nothing was saved."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    @property
    def field_errors(self) -> dict[str, list[str]]:
        """Messages keyed by field path ('' for the whole form)."""
        out: dict[str, list[str]] = {}
        for p in self.problems:
            out.setdefault(p.field or "", []).append(p.message)
        return out


class NotFound(CareflowError):
    """No such process, instance or task."""


class Conflict(CareflowError):
    """The task or instance changed under the caller (completed elsewhere, concurrent step)."""


class ScriptError(CareflowError):
    """A BPMN script or condition failed; names the task and line."""
