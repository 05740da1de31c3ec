"""The queue: fair between clients, first come first served within one client.

Owners take turns (round robin): a client that submits 100 jobs does not make another client's
one job wait behind all of them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable


class FairQueue:
    def __init__(self):
        self._owners: OrderedDict[str, deque[str]] = OrderedDict()
        self._owner_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._owner_of

    def __iter__(self):
        """The queued jobs, in no particular order."""
        return iter(self._owner_of)

    def push(self, owner: str, job_id: str, *, front: bool = False) -> None:
        q = self._owners.setdefault(owner, deque())
        q.appendleft(job_id) if front else q.append(job_id)
        self._owner_of[job_id] = owner

    def remove(self, job_id: str) -> bool:
        owner = self._owner_of.pop(job_id, None)
        if owner is None:
            return False
        q = self._owners[owner]
        q.remove(job_id)
        if not q:
            del self._owners[owner]
        return True

    def pop(self, accept: Callable[[str], bool] = lambda _: True) -> str | None:
        """The next job `accept` takes, from the owner whose turn it is."""
        for owner in list(self._owners):
            q = self._owners[owner]
            for job_id in q:
                if accept(job_id):
                    q.remove(job_id)
                    del self._owner_of[job_id]
                    if q:
                        self._owners.move_to_end(owner)  # this owner's turn is over
                    else:
                        del self._owners[owner]
                    return job_id
        return None

    def positions(self) -> dict[str, int]:
        """Each queued job's place in the order jobs would be taken (0 = next)."""
        queues = [list(q) for q in self._owners.values()]
        out, pos, depth = {}, 0, 0
        while any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q):
                    out[q[depth]] = pos
                    pos += 1
            depth += 1
        return out
