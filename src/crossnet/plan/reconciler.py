"""The reconciler: make the kernel match a list of desired Resources (`reconcile`),
tell what it would do (`pending`, for --dry-run), refuse what must not be applied
(`preflight`), remove what was recorded (`teardown`); crash safety through a `Journal`
written before the first change."""

from __future__ import annotations

from dataclasses import dataclass, field

from crossnet.errors import ApplyError
from crossnet.plan.env import Env
from crossnet.plan.resources import Resource
from crossnet.state import crash_point


@dataclass
class Change:
    action: str  # create | repair | remove
    resource: Resource

    def __str__(self) -> str:
        if self.action == "remove":
            return f"remove  {self.resource.key()}"
        return f"{self.action:7} {self.resource.describe()}"


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)  # what is now owned, in creation order


class Journal:
    """Where reconcile() writes down, before its first kernel change, every resource
    it may own afterwards (with what they must restore): see crossnet.state.
    The base class keeps nothing (callers without a state dir)."""

    def write(self, resources: list[Resource]) -> None:
        """Persist `resources` durably (fsync) before returning."""

    def discard(self) -> None:
        """The kernel is back to the recorded state: the entry is no longer needed."""

    def rolled_back(self, owned: list[Resource]) -> None:
        """A failed run removed what it created: crossnet owns `owned` again, the record
        the run started from (which may have been an interrupted run's journal)."""
        self.discard()


def preflight(desired: list[Resource], previous: list[Resource], env: Env) -> None:
    """Refuse, before anything changes, what must not be applied (links crossnet did
    not create, NIC configuration it cannot move faithfully)."""
    owned = {r.key() for r in previous}
    prev_by_key = {r.key(): r for r in previous}
    for r in desired:
        old = prev_by_key.get(r.key())
        if old is not None and old.saved and not r.saved:
            r.saved = dict(old.saved)
        r.preflight(env, owned)


def pending(desired: list[Resource], previous: list[Resource], env: Env) -> list[Change]:
    """What reconcile() would do, without doing it."""
    preflight(desired, previous, env)
    want_keys = {r.key() for r in desired}
    out = [Change("remove", r) for r in reversed(previous) if r.key() not in want_keys]
    prev_keys = {r.key() for r in previous}
    for r in desired:
        if not r.check(env):
            out.append(Change("repair" if r.key() in prev_keys else "create", r))
    return out


def reconcile(desired: list[Resource], previous: list[Resource], env: Env, journal: Journal | None = None) -> Outcome:
    """Make the kernel match `desired`. Resources in `previous` but not desired are
    removed (reverse order). On failure, everything this call created is rolled
    back, then ApplyError is raised. With a journal, every resource this call may
    own afterwards (previous and desired, with the state each must restore) is
    written to it before the first kernel change."""
    prev_by_key = {r.key(): r for r in previous}
    want_keys = {r.key() for r in desired}
    outcome = Outcome()
    created: list[Resource] = []
    preflight(desired, previous, env)  # also carries recorded `saved` over to desired
    # check everything against ONE snapshot of the kernel, then fix what differs
    # (checking after each change would re-dump tables: quadratic with many peers)
    ok = [r.check(env) for r in desired]
    todo = [r for r, fine in zip(desired, ok) if not fine]
    for r in todo:  # nothing has changed yet: a failure here needs no rollback
        try:
            r.prepare(env)
        except ApplyError:
            raise
        except Exception as exc:
            raise ApplyError(f"{r.describe()}: {exc}") from exc
    if journal is not None and (todo or any(r.key() not in want_keys for r in previous)):
        journal.write([r for r in previous if r.key() not in want_keys] + list(desired))
    crash_point()
    r: Resource | None = None
    try:
        for r, fine in zip(desired, ok):
            if fine:
                continue
            old = prev_by_key.get(r.key())
            if not r.batchable:
                env.flush()  # queued writes first: this one may depend on them
            r.ensure(env)
            crash_point()
            if old is None:
                created.append(r)
            outcome.changes.append(Change("repair" if old is not None else "create", r))
        r = None
        env.flush()
    except Exception as exc:
        failed = r
        undone = True
        for undo in reversed(created):
            try:
                undo.remove(env)
            except Exception:  # noqa: BLE001 - undo the others; the journal keeps this one
                undone = False
        env.changed()
        if env.batch:
            env.batch.messages.clear()
        if journal is not None and undone:
            journal.rolled_back(previous)
        if isinstance(exc, ApplyError):
            raise ApplyError(f"{exc} (rolled back)") from exc
        what = failed.describe() if failed is not None else "apply"
        raise ApplyError(f"{what}: {exc} (rolled back)") from exc
    for r in reversed(previous):
        if r.key() not in want_keys:
            r.remove(env)
            crash_point()
            outcome.changes.append(Change("remove", r))
    outcome.resources = list(desired)
    return outcome


def teardown(resources: list[Resource], env: Env) -> list[Change]:
    changes = []
    for r in reversed(resources):
        r.remove(env)
        crash_point()  # test hook: reset killed here runs again from the same record
        changes.append(Change("remove", r))
    env.changed()
    return changes
