"""The lease checker judges known-bad lease histories invalid, good ones valid.

Times are in seconds here (the helpers convert).  The bounds used: ET = 0.5 s,
so the expiry check runs every 0.25 s, ``revoke_delay`` = 2 * 0.25 + 0.5 + 1
+ 0.5 = 2.5 s and a leader change extends a lease to TTL + 1 s after the
election.
Every history polls three members in settled status rounds unless the test is
about the rounds themselves.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.checkers import LeaseBounds, Verdict, check_leases
from jepsen_like.checkers.lease_checker import NS
from jepsen_like.history import HistoryError, Operation, dumps_jsonl, loads_jsonl

BOUNDS = LeaseBounds(election_timeout=0.5)
TTL = 2
MONITOR = 1000


def _t(seconds: float) -> int:
    return round(seconds * NS)


class H:
    """A history under construction, ordered by time when built."""

    def __init__(self) -> None:
        self.events: list[Operation] = []

    def op(
        self,
        process: int,
        f: str,
        start: float,
        end: float | None,
        *,
        key: str | None = None,
        value: Any = None,
        result: Any = None,
        type: str = "ok",
        node: str | None = None,
        revision: int | None = None,
    ) -> H:
        self.events.append(
            Operation(
                process=process,
                type="invoke",
                f=f,
                time_ns=_t(start),
                key=key,
                value=value,
                node=node,
            )
        )
        if end is not None:
            self.events.append(
                Operation(
                    process=process,
                    type=type,
                    f=f,
                    time_ns=_t(end),
                    key=key,
                    value=value,
                    result=result,
                    node=node,
                    revision=revision,
                )
            )
        return self

    def lease(
        self, key: str, at: float, *, mode: str, lease_id: int = 7, ttl: int = TTL, process: int = 1
    ) -> H:
        """Grant at ``at`` (10 ms) and put the key (10 ms)."""
        self.op(
            process,
            "grant",
            at,
            at + 0.01,
            key=key,
            value={"ttl": ttl, "mode": mode},
            result={"lease": lease_id, "ttl": ttl},
        )
        return self.op(
            process, "put", at + 0.01, at + 0.02, key=key, value=lease_id, revision=round(at * 100)
        )

    def keepalive(
        self, key: str, at: float, *, ttl: int = TTL, type: str = "ok", process: int = 1
    ) -> H:
        end = at + 0.01 if type != "info" else at + 1.0
        return self.op(process, "keepalive", at, end, key=key, value=7, result=ttl, type=type)

    def stop(self, key: str, at: float, process: int = 1, reason: str = "planned") -> H:
        return self.op(process, "stop", at, at + 0.001, key=key, value=7, result=reason)

    def read(
        self, at: float, present: list[str], process: int = 2, *, revision: int | None = None
    ) -> H:
        """A linearizable read, or a serializable one at ``revision`` if given."""
        value = None if revision is None else "serializable"
        return self.op(
            process,
            "read",
            at,
            at + 0.01,
            key="p/",
            value=value,
            result=sorted(present),
            revision=revision,
        )

    def rounds(
        self,
        start: float,
        end: float,
        *,
        term: int = 1,
        every: float = 0.1,
        answering: int = 3,
        leader: int = 1,
    ) -> H:
        """Status rounds every ``every`` s from ``start`` to ``end``."""
        t = start
        number = len(self.events)
        while t <= end + 1e-9:
            number += 1
            for member in range(3):
                if member < answering:
                    self.op(
                        MONITOR + member,
                        "status",
                        t,
                        t + 0.005,
                        value=number,
                        result={"term": term, "leader": leader},
                    )
                else:
                    self.op(MONITOR + member, "status", t, t + 0.05, value=number, type="fail")
            t += every
        return self

    def build(self) -> list[Operation]:
        order = {"invoke": 1}
        return sorted(self.events, key=lambda e: (e.time_ns, order.get(e.type, 0)))


def check(h: H) -> Any:
    return check_leases(h.build(), bounds=BOUNDS, members=3)


# --------------------------------------------------------------------------
# Rule 1: no key outlives its lease


def stopped_lease(seen_at: float, *, rounds_until: float = 12.0) -> H:
    """A lease kept alive until 1.0 s, stopped at 1.5 s: R = 1.01, so the key
    must be gone by R + TTL + revoke_delay = 5.51 s when no leader changed."""
    h = H().lease("p/a", 0.0, mode="stopped").keepalive("p/a", 1.0).stop("p/a", 1.5)
    return h.read(0.5, ["p/a"]).read(seen_at, ["p/a"]).rounds(0.0, rounds_until)


def test_stopped_key_seen_within_the_bound_is_valid() -> None:
    result = check(stopped_lease(5.4))
    assert result.verdict is Verdict.VALID, result.describe()
    assert result.counts()["judged"] == 2


def test_key_outliving_its_lease_is_invalid() -> None:
    result = check(stopped_lease(5.6))
    assert result.verdict is Verdict.INVALID
    assert [a.kind for a in result.anomalies] == ["outlived"]
    assert result.anomalies[0].key == "p/a"


def test_leader_change_extends_the_bound_by_ttl_and_two_election_timeouts() -> None:
    # The key is seen at 5.6 s, too late without a leader change; but term 2
    # got a leader by 3.0 s: the lease may live until 3.0 + 1.0 + TTL + 2.5 = 8.5 s.

    def seen(*times: float) -> H:
        h = H().lease("p/a", 0.0, mode="stopped").keepalive("p/a", 1.0).stop("p/a", 1.5)
        for t in times:
            h.read(t, ["p/a"])
        return h.rounds(0.0, 2.9).rounds(3.0, 12.0, term=2, leader=2)

    good = check(seen(5.6, 8.4))
    assert good.verdict is Verdict.VALID, good.describe()
    assert good.counts()["terms_with_leader"] == 2
    bad = check(seen(5.6, 8.6))
    assert [a.kind for a in bad.anomalies] == ["outlived"]


def test_a_read_after_the_last_settled_round_is_not_judged() -> None:
    # Nothing tells that no leader was elected just before the read.
    result = check(stopped_lease(9.0, rounds_until=8.0))
    assert result.verdict is Verdict.VALID
    assert result.counts()["unjudged"] == 1


def test_rounds_answered_by_a_minority_settle_nothing() -> None:
    h = H().lease("p/a", 0.0, mode="stopped").keepalive("p/a", 1.0).stop("p/a", 1.5)
    h.read(9.0, ["p/a"]).rounds(0.0, 12.0, answering=1)
    result = check(h)
    assert result.verdict is Verdict.VALID
    assert result.counts()["settled_rounds"] == 0 and result.counts()["unjudged"] == 1


def test_a_keepalive_without_answer_may_renew_late() -> None:
    # The last keep-alive timed out at 2.0 s: it may have reached the leader
    # up to 2 ET = 1 s later, so the key may live until 3.0 + TTL + 2.5 = 7.5 s.
    h = H().lease("p/a", 0.0, mode="stopped").keepalive("p/a", 1.0, type="info")
    h.stop("p/a", 2.5).rounds(0.0, 12.0)
    assert check(h.read(7.4, ["p/a"])).verdict is Verdict.VALID
    assert check(h.read(7.6, ["p/a"])).verdict is Verdict.INVALID


def test_a_key_seen_before_its_put_is_a_phantom() -> None:
    h = H().read(0.5, ["p/a"]).lease("p/a", 1.0, mode="stopped").rounds(0.0, 5.0)
    assert [a.kind for a in check(h).anomalies] == ["phantom"]


# --------------------------------------------------------------------------
# Rule 2: no key of a kept-alive lease vanishes


def kept_lease() -> H:
    h = H().lease("p/k", 0.0, mode="kept")
    for i in range(1, 8):
        h.keepalive("p/k", i * 0.5)  # last one invoked at 3.5 s: alive until 5.5 s
    return h.rounds(0.0, 12.0)


def test_kept_alive_key_present_throughout_is_valid() -> None:
    h = kept_lease()
    for i in range(10):
        h.read(0.05 + i * 0.5, ["p/k"])
    result = check(h)
    assert result.verdict is Verdict.VALID, result.describe()


def test_kept_alive_key_that_vanishes_is_invalid() -> None:
    result = check(kept_lease().read(2.0, ["p/k"]).read(5.3, []))
    assert [a.kind for a in result.anomalies] == ["vanished"]


def test_kept_alive_lease_may_expire_after_a_keepalive_gap() -> None:
    # Keep-alives failed from 4.0 s on (no leader reachable): the lease is
    # guaranteed only until 3.5 + TTL = 5.5 s; gone at 6.0 s is no anomaly.
    h = kept_lease()
    for i in range(3):
        h.keepalive("p/k", 4.0 + i * 0.6, type="fail")
    result = check(h.read(6.0, []))
    assert result.verdict is Verdict.VALID, result.describe()
    assert result.counts()["expired_after_gap"] == 1


def test_a_kept_lease_stopped_at_the_end_may_expire() -> None:
    result = check(kept_lease().stop("p/k", 4.0, reason="end").read(6.0, []))
    assert result.verdict is Verdict.VALID
    assert result.counts()["kept_expired_after_stop"] == 1


def test_a_keepalive_answering_ttl_zero_guarantees_nothing() -> None:
    h = H().lease("p/k", 0.0, mode="kept").keepalive("p/k", 0.5).keepalive("p/k", 1.0, ttl=0)
    assert check(h.rounds(0.0, 5.0).read(2.6, [])).verdict is Verdict.VALID
    assert check(h.read(2.4, [])).verdict is Verdict.INVALID  # 0.5 + TTL = 2.5


def test_a_read_invoked_before_the_put_completed_proves_nothing() -> None:
    h = H().lease("p/k", 1.0, mode="kept").rounds(0.0, 5.0)
    h.op(2, "read", 1.005, 1.05, key="p/", result=[])
    assert check(h).verdict is Verdict.VALID


def test_serializable_reads_only_count_once_their_member_applied_the_put() -> None:
    # The put is at revision 0 * 100 = 0 for a lease at 0.0: use one at 1.0 (revision 100).
    h = H().lease("p/k", 1.0, mode="kept").keepalive("p/k", 1.5).rounds(0.0, 6.0)
    behind = check(h.read(2.0, [], revision=99))  # a lagging member: the put is not there yet
    assert behind.verdict is Verdict.VALID, behind.describe()
    assert check(h.read(2.1, [], revision=100)).counts()["vanished"] == 1


def test_serializable_reads_may_show_revoked_keys() -> None:
    result = check(stopped_lease(5.6).read(9.0, ["p/a"], revision=1))
    assert [a.kind for a in result.anomalies] == ["outlived"]  # only the linearizable one
    assert result.counts()["reads_serializable"] == 1


# --------------------------------------------------------------------------
# Format


def test_the_history_survives_jsonl_and_malformed_ones_are_rejected() -> None:
    events = stopped_lease(5.6).build()
    assert (
        check_leases(loads_jsonl(dumps_jsonl(events)), bounds=BOUNDS, members=3).counts()[
            "outlived"
        ]
        == 1
    )
    with pytest.raises(HistoryError):
        check_leases(events[1:], bounds=BOUNDS, members=3)


def test_bounds_follow_the_server() -> None:
    b = LeaseBounds(election_timeout=1.0)
    assert b.expiry_interval == 0.5
    assert b.revoke_delay == pytest.approx(0.5 + 0.5 + 1 + 1 + 0.5)
    assert BOUNDS.revoke_delay == pytest.approx(2.5)
    assert b.promotion_extension == 2.0
    assert LeaseBounds(0.2).expiry_interval == pytest.approx(0.1)


# --------------------------------------------------------------------------
# Against a model of the server's expiry


class _ModelRun:
    """A simulated lease run following ``kvstore.lease`` and ``kvstore.server``:
    only the promoted leader tracks deadlines; a keep-alive it receives sets
    receipt + TTL, a promotion (within ET of the election) sets promotion +
    TTL + ET for every lease; every ``interval`` the leader revokes what
    expired, committing within 0.1 s unless leadership moves first.

    ``outlive`` never revokes the first stopped lease (a store that keeps keys
    too long); ``vanish`` revokes the kept lease at that time regardless of its
    deadline (a store that loses them).  The last election is at 10 s at the
    latest and the run lasts 20 s, so a lease that outlives its bound is seen.
    """

    def __init__(self, seed: int, *, outlive: bool = False, vanish: float | None = None) -> None:
        import random

        rng = random.Random(seed)
        et, interval, dt, end = BOUNDS.election_timeout, BOUNDS.expiry_interval, 0.01, 20.0
        elections = sorted({0.0, *(round(rng.uniform(1, 10), 2) for _ in range(rng.randrange(4)))})
        promote = {e: round(e + rng.uniform(0, et), 2) for e in elections}
        h = H()
        leases = {
            "p/kept": ("kept", 0.2, end),
            "p/s1": ("stopped", 0.5, round(rng.uniform(1, 4), 2)),
            "p/s2": ("stopped", round(rng.uniform(3, 8), 2), round(rng.uniform(8, 12), 2)),
        }
        deadline: dict[str, float] = {}
        alive: set[str] = set()
        revoking: dict[str, float] = {}
        next_ka = {key: start + 0.5 for key, (_, start, _) in leases.items()}
        primary_since = 0.0
        t = 0.0
        step = 0
        while t < end:
            t = round(step * dt, 2)
            step += 1
            term = sum(1 for e in elections if e <= t)
            elected = max(e for e in elections if e <= t)
            primary = t >= promote[elected]
            if t == promote[elected]:
                primary_since = t
                deadline = {k: t + TTL + et for k in alive}
                revoking.clear()
            if t in elections and t > 0:
                revoking.clear()  # an uncommitted revoke dies with the old term
            for index, (key, (mode, start, stop)) in enumerate(leases.items()):
                if t == start:
                    h.lease(key, t, mode=mode, process=10 + index)
                    alive.add(key)
                    deadline[key] = t + 0.005 + TTL
                if key in alive and start < t < stop and t >= next_ka[key]:
                    next_ka[key] = t + 0.5
                    h.keepalive(key, t, type="ok" if primary else "fail", process=10 + index)
                    if primary:
                        deadline[key] = t + 0.005 + TTL
                if key in alive and t == stop and mode == "stopped":
                    h.stop(key, t, process=10 + index)
            if primary and round((t - primary_since) / interval, 6).is_integer():
                for key in alive:
                    kept_forever = outlive and key == "p/s1"
                    if deadline[key] <= t and key not in revoking and not kept_forever:
                        revoking[key] = t + rng.uniform(0, 0.1)
            if vanish is not None and abs(t - vanish) < dt / 2 and "p/kept" in alive:
                revoking["p/kept"] = t
            for key, when in list(revoking.items()):
                if when <= t:
                    alive.discard(key)
                    del revoking[key]
            if step % 10 == 0:
                h.read(t, sorted(alive))
                leader_named = t >= elected + 0.02
                for member in range(3):
                    result = {"term": term, "leader": term if leader_named else 0}
                    h.op(
                        MONITOR + member, "status", t + 0.001, t + 0.006, value=step, result=result
                    )
        self.history = h


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1))
def test_model_runs_are_valid(seed: int) -> None:
    result = check(_ModelRun(seed).history)
    assert result.verdict is Verdict.VALID, result.describe()
    assert result.counts()["judged"] > 50


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1))
def test_model_runs_with_a_key_kept_too_long_are_invalid(seed: int) -> None:
    result = check(_ModelRun(seed, outlive=True).history)
    assert "outlived" in result.counts(), result.describe()


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.floats(2.0, 18.0))
def test_model_runs_losing_a_kept_key_are_invalid(seed: int, when: float) -> None:
    result = check(_ModelRun(seed, vanish=round(when, 2)).history)
    assert "vanished" in result.counts(), result.describe()
