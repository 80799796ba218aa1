"""The jepsen_like checkers judge known-bad histories invalid and good ones valid.

A checker that never fires proves nothing, so every anomaly the harness is
meant to catch has a hand-made history here (stale read, lost write,
impossible cas, watch gap, duplicate event, split revision, overlapping fenced
sections, lost set element), next to valid histories that need the checker's
leniency (concurrent operations reordered, indefinite operations that did and
did not take effect).  Hypothesis then generates histories by running a
sequential register with random concurrency -- linearizable by construction --
which must be judged valid, and must become invalid once one read returns a
value never written; a brute-force search cross-checks the verdict on small
arbitrary histories.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.checkers import (
    Event,
    FencedEntry,
    HeldInterval,
    RegisterModel,
    Verdict,
    WatcherLog,
    check_fenced_log,
    check_linearizable,
    check_set,
    check_watches,
    unfenced_overlaps,
)
from jepsen_like.history import (
    CompleteOp,
    HistoryError,
    Operation,
    complete_operations,
    dump,
    dumps_jsonl,
    load,
    loads_jsonl,
)

# --------------------------------------------------------------------------
# History builders


def inv(p: int, f: str, t: int, value: Any = None, key: str = "k") -> Operation:
    return Operation(process=p, type="invoke", f=f, key=key, value=value, time_ns=t)


def done(
    p: int,
    f: str,
    t: int,
    result: Any = None,
    *,
    succeeded: bool | None = None,
    type: str = "ok",
    key: str = "k",
) -> Operation:
    return Operation(
        process=p,
        type=type,  # type: ignore[arg-type]
        f=f,
        key=key,
        result=result,
        succeeded=succeeded,
        time_ns=t,
    )


def op(p: int, f: str, call: int, ret: int, value: Any = None, **kw: Any) -> list[Operation]:
    """An invoke and its completion."""
    key = kw.pop("key", "k")
    return [inv(p, f, call, value, key=key), done(p, f, ret, key=key, **kw)]


def hist(*parts: list[Operation]) -> list[Operation]:
    """Merge per-operation event pairs into one history ordered by time."""
    events = [e for part in parts for e in part]
    return sorted(events, key=lambda e: (e.time_ns, e.type != "invoke"))


# --------------------------------------------------------------------------
# history.py


def test_pairing_info_fail_and_pending() -> None:
    h = hist(
        op(1, "write", 0, 10, 1),
        op(2, "write", 5, 15, 2, type="fail"),
        op(3, "write", 6, 20, 3, type="info"),
        [inv(4, "read", 30)],
    )
    ops = complete_operations(h)
    assert [(o.process, o.outcome) for o in ops] == [(1, "ok"), (3, "info"), (4, "info")]
    assert ops[1].ret == math.inf and ops[2].ret == math.inf
    assert len(complete_operations(h, include_failed=True)) == 4


def test_malformed_histories_are_rejected() -> None:
    with pytest.raises(HistoryError):
        complete_operations([done(1, "read", 5)])
    with pytest.raises(HistoryError):
        complete_operations([inv(1, "read", 0), inv(1, "write", 1, 5)])
    with pytest.raises(HistoryError):
        complete_operations([inv(1, "read", 0), done(1, "write", 1)])


def test_jsonl_round_trip(tmp_path: Any) -> None:
    h = hist(op(1, "cas", 0, 10, [1, 2], succeeded=True), op(2, "read", 3, 4, result="x"))
    h[0] = msgspec.structs.replace(h[0], node="n1")
    assert loads_jsonl(dumps_jsonl(h)) == h
    dump(h, tmp_path / "history.jsonl")
    assert load(tmp_path / "history.jsonl") == h
    first = msgspec.json.decode(dumps_jsonl(h).splitlines()[0])
    assert first == {"process": 1, "type": "invoke", "f": "cas", "time_ns": 0,
                     "key": "k", "value": [1, 2], "node": "n1"}  # fmt: skip


# --------------------------------------------------------------------------
# linearizable.py: known-bad


def test_stale_read_is_invalid_and_window_is_smallest() -> None:
    h = hist(
        op(1, "write", 0, 10, 1),
        op(2, "read", 12, 14, result=1),
        op(1, "write", 20, 30, 2),
        op(2, "read", 40, 50, result=1),  # stale: 2 was acknowledged before
        op(1, "write", 60, 70, 3),
        op(2, "read", 80, 90, result=3),
    )
    r = check_linearizable(h)
    assert r.verdict is Verdict.INVALID and not r.valid
    kr = r.keys["k"]
    assert kr.culprit is not None and kr.culprit.f == "read" and kr.culprit.result == 1
    assert kr.cut == 50
    assert len(kr.window) == 4  # the last write and read are not needed
    text = r.describe()
    assert "smallest non-linearizable prefix: 4 ops" in text and "<--" in text


def test_lost_write_is_invalid() -> None:
    h = hist(op(1, "write", 0, 10, "a"), op(2, "read", 20, 30, result=None))
    assert check_linearizable(h).verdict is Verdict.INVALID


def test_impossible_cas_is_invalid() -> None:
    swapped = hist(op(1, "write", 0, 10, 1), op(2, "cas", 20, 30, [2, 3], succeeded=True))
    assert check_linearizable(swapped).verdict is Verdict.INVALID
    refused = hist(op(1, "write", 0, 10, 1), op(2, "cas", 20, 30, [1, 3], succeeded=False))
    assert check_linearizable(refused).verdict is Verdict.INVALID
    # The value it would have written shows up anyway.
    ghost = hist(
        op(1, "write", 0, 10, 1),
        op(2, "cas", 20, 30, [5, 3], succeeded=False),
        op(3, "read", 40, 50, result=3),
    )
    assert check_linearizable(ghost).verdict is Verdict.INVALID


def test_failed_write_never_happened() -> None:
    h = hist(op(1, "write", 0, 10, 7, type="fail"), op(2, "read", 20, 30, result=7))
    assert check_linearizable(h).verdict is Verdict.INVALID


def test_info_write_seen_then_unseen_is_invalid() -> None:
    h = hist(
        op(1, "write", 0, 10, 7, type="info"),
        op(2, "read", 20, 30, result=7),
        op(2, "read", 40, 50, result=None),
    )
    assert check_linearizable(h).verdict is Verdict.INVALID


def test_read_order_contradicting_real_time_is_invalid() -> None:
    # Writes 1 then 2 concurrent with both reads, but the reads are sequential
    # and see 2 then 1: no single order explains that.
    h = hist(
        op(1, "write", 0, 100, 1),
        op(2, "write", 0, 100, 2),
        op(3, "read", 10, 20, result=2),
        op(3, "read", 30, 40, result=1),
        op(4, "read", 50, 60, result=2),
    )
    assert check_linearizable(h).verdict is Verdict.INVALID


# --------------------------------------------------------------------------
# linearizable.py: known-good


def test_concurrent_ops_need_reordering() -> None:
    h = hist(
        op(1, "write", 0, 100, 1),
        op(2, "read", 5, 15, result=None),  # before the write takes effect
        op(3, "read", 10, 20, result=1),  # after
        op(4, "cas", 30, 40, [1, 2], succeeded=True),
        op(5, "write", 25, 90, 3),  # invoked before the cas, lands after it
        op(6, "read", 95, 99, result=3),
    )
    r = check_linearizable(h)
    assert r.verdict is Verdict.VALID, r.describe()


def test_touching_operations_are_concurrent() -> None:
    h = hist(op(1, "write", 0, 10, 1), op(2, "read", 10, 20, result=None))
    assert check_linearizable(h).valid


def test_info_ops_that_did_and_did_not_take_effect() -> None:
    took = hist(op(1, "write", 0, 10, 7, type="info"), op(2, "read", 50, 60, result=7))
    assert check_linearizable(took).valid
    did_not = hist(op(1, "write", 0, 10, 7, type="info"), op(2, "read", 50, 60, result=None))
    assert check_linearizable(did_not).valid
    # Taking effect long after the client gave up is allowed too.
    late = hist(
        op(1, "write", 0, 10, 7, type="info"),
        op(2, "read", 50, 60, result=None),
        op(2, "read", 70, 80, result=7),
    )
    assert check_linearizable(late).valid
    cas = hist(
        op(1, "write", 0, 5, 1),
        op(2, "cas", 10, 20, [1, 2], type="info"),
        op(3, "read", 30, 40, result=2),
    )
    assert check_linearizable(cas).valid
    pending_read = hist(op(1, "write", 0, 5, 1), [inv(2, "read", 6)])
    assert check_linearizable(pending_read).valid


def test_info_cas_not_applicable_at_first_may_apply_later() -> None:
    # Found by the brute-force cross-check: an indefinite cas must not be
    # committed greedily as a no-op, it may swap once its expected value is there.
    h = hist(
        op(1, "read", 0, 0, result=2),
        op(2, "cas", 0, 0, [0, 2], type="info"),
        op(3, "write", 0, 0, 0),
    )
    assert check_linearizable(h).valid


def test_many_concurrent_reads_stay_fast() -> None:
    parts = [op(p, "read", 0, 10, result=None) for p in range(300)]
    assert check_linearizable(hist(*parts), budget=10_000).valid
    parts[150] = op(150, "read", 0, 10, result="never-written")
    r = check_linearizable(hist(*parts), budget=10_000)
    assert r.verdict is Verdict.INVALID
    assert r.keys["k"].culprit is not None and r.keys["k"].culprit.result == "never-written"


def test_keys_are_checked_independently() -> None:
    h = hist(
        op(1, "write", 0, 10, 1, key="a"),
        op(2, "write", 0, 10, 1, key="b"),
        op(1, "read", 20, 30, result=1, key="a"),
        op(2, "read", 20, 30, result=None, key="b"),
    )
    r = check_linearizable(h)
    assert r.verdict is Verdict.INVALID
    assert r.keys["a"].verdict is Verdict.VALID and r.keys["b"].verdict is Verdict.INVALID
    assert "key 'b'" in r.describe() and "key 'a'" not in r.describe()


def test_budget_gives_unknown() -> None:
    parts = [op(p, "write", 0, 100, p) for p in range(8)]
    parts.append(op(9, "read", 200, 210, result=3))
    h = hist(*parts)
    assert check_linearizable(h, budget=5).verdict is Verdict.UNKNOWN
    assert check_linearizable(h).verdict is Verdict.VALID


def test_complete_ops_accepted_directly() -> None:
    ops = complete_operations(
        hist(op(1, "write", 0, 10, [1, 2]), op(2, "read", 20, 30, result=[1, 2]))
    )
    assert check_linearizable(ops).valid  # list values compare after freezing


# --------------------------------------------------------------------------
# Hypothesis: linearizable by construction


@st.composite
def register_histories(draw: st.DrawFn) -> list[Operation]:
    """Run a sequential register per key; each op takes effect between invoke and completion.

    Pending operations may end ``ok`` (after taking effect), ``fail`` (never
    taking effect), or ``info`` (having taken effect, or taking effect later,
    or never).
    """
    procs = draw(st.integers(1, 4))
    total = draw(st.integers(1, 18))
    keys = ["a", "b"][: draw(st.integers(1, 2))]
    state: dict[str, Any] = {}
    written: list[Any] = [None]
    events: list[Operation] = []
    pending: dict[int, dict[str, Any]] = {}
    ghosts: list[dict[str, Any]] = []  # info ops that may still take effect
    t = started = 0
    serial = itertools.count()

    def apply(x: dict[str, Any]) -> None:
        k, f = x["key"], x["f"]
        if f == "read":
            x["result"] = state.get(k)
        elif f == "write":
            state[k] = x["value"]
        else:
            expected, new = x["value"]
            x["succeeded"] = state.get(k) == expected
            if x["succeeded"]:
                state[k] = new
        x["applied"] = True

    while started < total or pending:
        t += draw(st.integers(0, 3))
        actions = []
        if started < total and len(pending) < procs:
            actions.append("invoke")
        if any(not x["applied"] for x in pending.values()):
            actions.append("apply")
        if any(x["applied"] for x in pending.values()):
            actions.append("complete")
        if pending:
            actions.append("give_up")
        if ghosts:
            actions.append("ghost")
        action = draw(st.sampled_from(actions))
        if action == "invoke":
            p = next(p for p in range(procs) if p not in pending)
            f = draw(st.sampled_from(["read", "write", "cas"]))
            key = draw(st.sampled_from(keys))
            value: Any = None
            if f == "write":
                value = f"v{next(serial)}"
            elif f == "cas":
                value = [draw(st.sampled_from(written)), f"v{next(serial)}"]
            if value is not None:
                written.append(value if f == "write" else value[1])
            pending[p] = {"f": f, "key": key, "value": value, "applied": False}
            events.append(inv(p, f, t, value, key=key))
            started += 1
        elif action == "apply":
            p = draw(st.sampled_from(sorted(p for p, x in pending.items() if not x["applied"])))
            apply(pending[p])
        elif action == "complete":
            p = draw(st.sampled_from(sorted(p for p, x in pending.items() if x["applied"])))
            x = pending.pop(p)
            events.append(
                done(p, x["f"], t, x.get("result"), succeeded=x.get("succeeded"), key=x["key"])
            )
        elif action == "give_up":
            p = draw(st.sampled_from(sorted(pending)))
            x = pending.pop(p)
            if not x["applied"] and draw(st.booleans()):
                events.append(done(p, x["f"], t, type="fail", key=x["key"]))
            else:
                events.append(done(p, x["f"], t, type="info", key=x["key"]))
                if not x["applied"]:
                    ghosts.append(x)
        else:
            apply(ghosts.pop(draw(st.integers(0, len(ghosts) - 1))))
    return events


@settings(max_examples=300, deadline=None)
@given(register_histories(), st.data())
def test_generated_histories_valid_and_mutated_read_invalid(
    h: list[Operation], data: st.DataObject
) -> None:
    r = check_linearizable(h)
    assert r.verdict is Verdict.VALID, r.describe()
    reads = [i for i, e in enumerate(h) if e.type == "ok" and e.f == "read"]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    mutated = list(h)
    mutated[i] = msgspec.structs.replace(h[i], result="never-written")
    bad = check_linearizable(mutated)
    assert bad.verdict is Verdict.INVALID
    kr = bad.keys[h[i].key]
    assert kr.culprit is not None and kr.window
    # The window really is a failing prefix and the culprit is where it fails.
    assert check_linearizable(kr.window).verdict is Verdict.INVALID
    shorter = [o for o in kr.window if o is not kr.culprit]
    assert kr.culprit.ret == kr.cut and len(shorter) < len(kr.window)


def _brute_force(ops: list[CompleteOp]) -> bool:
    """Exhaustive check: some subset of info ops plus all ok ops, in some legal order."""
    model = RegisterModel()
    definite = [o for o in ops if not o.indefinite]
    maybe = [o for o in ops if o.indefinite and o.f != "read"]
    for r in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, r):
            chosen = definite + list(extra)
            for perm in itertools.permutations(chosen):
                if any(
                    perm[j].ret < perm[i].call
                    for i in range(len(perm))
                    for j in range(i + 1, len(perm))
                ):
                    continue
                state = model.init()
                for o in perm:
                    ok, state = model.step(state, o)
                    if not ok:
                        break
                else:
                    return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["read", "write", "cas"]),
            st.integers(0, 2),  # value / expected
            st.integers(0, 2),  # cas new value
            st.booleans(),  # cas succeeded
            st.integers(0, 20),  # call
            st.integers(0, 20),  # duration
            st.sampled_from(["ok", "ok", "ok", "info"]),
        ),
        max_size=6,
    )
)
def test_search_agrees_with_brute_force(raw: list[tuple[Any, ...]]) -> None:
    ops = []
    for i, (f, a, b, succ, call, dur, outcome) in enumerate(raw):
        info = outcome == "info"
        ops.append(
            CompleteOp(
                index=i,
                process=i,
                f=f,
                key="k",
                value=a if f == "write" else ([a, b] if f == "cas" else None),
                call=call,
                ret=math.inf if info else call + dur,
                outcome=outcome,
                result=(None if a == 0 else a) if f == "read" and not info else None,
                succeeded=succ if f == "cas" and not info else None,
            )
        )
    ops.sort(key=lambda o: o.call)
    expected = _brute_force(ops)
    assert check_linearizable(ops).valid is expected


# --------------------------------------------------------------------------
# set_checker.py


def test_set_valid_with_indeterminate_adds() -> None:
    h = hist(
        op(1, "add", 0, 10, 1),
        op(2, "add", 0, 10, 2, type="info"),
        op(3, "add", 0, 10, 3, type="info"),
        op(4, "add", 0, 10, 4, type="fail"),
        op(1, "read", 20, 30, result=[1, 2]),
    )
    r = check_set(h)
    assert r.valid, r.describe()
    assert r.counts()["indeterminate_present"] == 1 and r.counts()["indeterminate_absent"] == 1


def test_set_lost_element_is_invalid() -> None:
    h = hist(op(1, "add", 0, 10, 1), op(2, "add", 0, 10, 2))
    r = check_set(h, final_read=[2])
    assert r.verdict is Verdict.INVALID and r.lost == {1}
    assert "lost" in r.describe()


def test_set_unexpected_failed_and_duplicate_elements_are_invalid() -> None:
    h = hist(op(1, "add", 0, 10, 1), op(2, "add", 0, 10, 2, type="fail"))
    assert check_set(h, final_read=[1, 9]).unexpected == {9}
    assert check_set(h, final_read=[1, 2]).failed_but_present == {2}
    assert check_set(h, final_read=[1, 1]).duplicated == {1}
    assert check_set(h).verdict is Verdict.UNKNOWN  # no final read


# --------------------------------------------------------------------------
# watch_checker.py

COMMITTED = [
    Event(2, "/p/a", "put", "1"),
    Event(3, "/p/b", "put", "2"),
    Event(3, "/p/c", "put", "3"),  # one txn, two events
    Event(4, "/q/x", "put", "other prefix"),
    Event(5, "/p/a", "delete"),
    Event(6, "/p/b", "put", "4"),
]
E2, E3b, E3c, _, E5, E6 = COMMITTED


def watcher(responses: list[list[Event]], start: int = 1, **kw: Any) -> WatcherLog:
    return WatcherLog(watcher="w", start_revision=start, responses=responses, prefix="/p/", **kw)


def kinds(r: Any) -> set[str]:
    return {a.kind for a in r.anomalies}


def test_watch_valid_with_resume_and_late_start() -> None:
    w1 = watcher([[E2], [E3b, E3c], [E5], [E6]])  # resumed after revision 3: same stream
    w2 = WatcherLog(watcher="late", start_revision=5, responses=[[E5, E6]], prefix="/p/")
    w3 = WatcherLog(watcher="early-stop", start_revision=1, responses=[[E2]], end_revision=2)
    r = check_watches(COMMITTED, [w1, w2, w3])
    assert r.valid, r.describe()


def test_watch_gap_is_invalid() -> None:
    r = check_watches(COMMITTED, [watcher([[E2], [E5], [E6]])])
    assert r.verdict is Verdict.INVALID and kinds(r) == {"gap"}
    assert {a.revision for a in r.anomalies} == {3}


def test_watch_duplicate_is_invalid() -> None:
    r = check_watches(COMMITTED, [watcher([[E2], [E3b, E3c], [E3b, E3c], [E5], [E6]])])
    assert "duplicate" in kinds(r)


def test_watch_split_revision_is_invalid() -> None:
    r = check_watches(COMMITTED, [watcher([[E2], [E3b], [E3c], [E5], [E6]])])
    assert kinds(r) == {"split_revision"}
    partial = check_watches(COMMITTED, [watcher([[E2], [E3b], [E5], [E6]])])
    assert "split_revision" in kinds(partial) and not partial.valid


def test_watch_unordered_phantom_tail_and_before_start() -> None:
    assert "unordered" in kinds(check_watches(COMMITTED, [watcher([[E2], [E5], [E3b, E3c], [E6]])]))
    fake = Event(5, "/p/a", "put", "never")
    assert "phantom" in kinds(check_watches(COMMITTED, [watcher([[E2], [E3b, E3c], [fake], [E6]])]))
    assert kinds(check_watches(COMMITTED, [watcher([[E2], [E3b, E3c]])])) == {"missing_tail"}
    early = check_watches(COMMITTED, [watcher([[E2], [E3b, E3c], [E5], [E6]], start=3)])
    assert kinds(early) == {"before_start"}


# --------------------------------------------------------------------------
# lock_checker.py


def F(client: str, token: int, kind: str) -> FencedEntry:
    return FencedEntry(client, token, kind)


def test_fenced_log_valid_with_abandoned_section() -> None:
    log = [F("a", 10, "begin"), F("a", 10, "end"), F("b", 12, "begin"), F("c", 15, "begin")]
    log.append(F("c", 15, "end"))
    r = check_fenced_log(log)
    assert r.valid and r.sections == 3 and r.abandoned == 1, r.describe()


def test_overlapping_fenced_sections_are_invalid() -> None:
    log = [F("a", 10, "begin"), F("b", 12, "begin"), F("a", 10, "end"), F("b", 12, "end")]
    r = check_fenced_log(log)
    assert r.verdict is Verdict.INVALID and "stale_token" in r.counts()
    interleaved = [F("a", 10, "begin"), F("b", 9, "begin"), F("b", 9, "end"), F("a", 10, "end")]
    r2 = check_fenced_log(interleaved)
    assert {"overlap", "token_not_increasing"} <= set(r2.counts())


def test_fenced_token_reuse_and_stray_end_are_invalid() -> None:
    assert "token_reused" in check_fenced_log([F("a", 5, "begin"), F("b", 5, "end")]).counts()
    assert "end_without_begin" in check_fenced_log([F("a", 5, "end")]).counts()
    assert "double_begin" in check_fenced_log([F("a", 5, "begin"), F("a", 5, "begin")]).counts()


def test_unfenced_overlaps_are_reported() -> None:
    rep = unfenced_overlaps(
        [HeldInterval("a", 0, 10), HeldInterval("b", 5, 15), HeldInterval("c", 15, 20)]
    )
    assert rep.overlaps == 1 and rep.intervals == 3
    assert {h.client for h in rep.overlapping_pairs[0]} == {"a", "b"}
