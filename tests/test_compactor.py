"""Tests of the automatic compaction policies (kvstore/compactor.py)."""

from __future__ import annotations

import pytest

from kvstore.compactor import PeriodicCompactor, RevisionCompactor

# -- RevisionCompactor ----------------------------------------------------------------------


def test_revision_compactor_keeps_the_last_revisions() -> None:
    compactor = RevisionCompactor(retain=100, interval=60)
    assert compactor.next_compaction(0.0, 50) is None  # nothing old enough
    assert compactor.next_compaction(60.0, 150) == 50
    assert compactor.next_compaction(61.0, 500) is None  # once per interval
    assert compactor.next_compaction(119.0, 500) is None
    assert compactor.next_compaction(120.0, 500) == 400


def test_revision_compactor_may_compact_on_first_observation() -> None:
    compactor = RevisionCompactor(retain=10)
    assert compactor.next_compaction(1000.0, 25) == 15
    assert compactor.interval == 300.0


def test_revision_compactor_never_repeats_or_goes_back() -> None:
    compactor = RevisionCompactor(retain=10, interval=1)
    assert compactor.next_compaction(0.0, 30) == 20
    assert compactor.next_compaction(1.0, 30) is None  # no new writes
    assert compactor.next_compaction(2.0, 25) is None  # (a stale observation)
    assert compactor.next_compaction(3.0, 31) == 21


def test_revision_compactor_respects_the_store_compaction() -> None:
    compactor = RevisionCompactor(retain=10, interval=1)
    assert compactor.next_compaction(0.0, 100, compact_revision=95) is None
    assert compactor.next_compaction(1.0, 110, compact_revision=95) == 100


def test_revision_compactor_with_zero_retention() -> None:
    compactor = RevisionCompactor(retain=0, interval=1)
    assert compactor.next_compaction(0.0, 1) == 1
    assert compactor.next_compaction(1.0, 7) == 7


@pytest.mark.parametrize(("retain", "interval"), [(-1, 1.0), (1, 0.0), (1, -5.0)])
def test_revision_compactor_rejects_bad_settings(retain: int, interval: float) -> None:
    with pytest.raises(ValueError):
        RevisionCompactor(retain, interval)


# -- PeriodicCompactor ----------------------------------------------------------------------


def test_periodic_compactor_compacts_to_the_revision_of_one_period_ago() -> None:
    compactor = PeriodicCompactor(period_seconds=100, interval=10)
    answers = {}
    for second in range(0, 301):
        revision = 1 + 2 * second  # two writes a second
        target = compactor.next_compaction(float(second), revision)
        if target is not None:
            answers[second] = target
    # First compaction once a sample is one period old, then every interval.
    assert min(answers) == 100
    assert answers[100] == 1  # the revision observed at t=0
    assert sorted(answers) == list(range(100, 301, 10))
    for second, target in answers.items():
        assert target == 1 + 2 * (second - 100)  # exactly one period of history kept


def test_periodic_compactor_keeps_at_least_one_period() -> None:
    compactor = PeriodicCompactor(period_seconds=60, interval=7)
    now, revision = 0.0, 1
    observed: list[tuple[float, int]] = []
    while now < 600:
        observed.append((now, revision))
        target = compactor.next_compaction(now, revision)
        if target is not None:
            # Every revision current in the last `period` seconds is kept.
            recent = [r for t, r in observed if t >= now - 60]
            assert target <= min(recent)
        now += 1.3
        revision += 3


def test_periodic_compactor_default_interval() -> None:
    assert PeriodicCompactor(100).interval == 10
    assert PeriodicCompactor(72 * 3600).interval == 3600  # capped at an hour


def test_periodic_compactor_bounded_memory() -> None:
    compactor = PeriodicCompactor(period_seconds=100, interval=10)
    for second in range(10_000):
        compactor.next_compaction(float(second), second + 1)
    assert len(compactor._samples) <= 12


def test_periodic_compactor_without_writes_does_not_repeat() -> None:
    compactor = PeriodicCompactor(period_seconds=10, interval=1)
    targets = [compactor.next_compaction(float(t), 42) for t in range(30)]
    assert [t for t in targets if t is not None] == [42]


def test_periodic_compactor_ignores_a_clock_going_backwards() -> None:
    compactor = PeriodicCompactor(period_seconds=10, interval=1)
    compactor.next_compaction(100.0, 5)
    assert compactor.next_compaction(50.0, 9) is None
    assert compactor.next_compaction(110.0, 20) == 5


def test_periodic_compactor_respects_the_store_compaction() -> None:
    compactor = PeriodicCompactor(period_seconds=10, interval=1)
    compactor.next_compaction(0.0, 5)
    assert compactor.next_compaction(10.0, 9, compact_revision=6) is None


@pytest.mark.parametrize(("period", "interval"), [(0.0, None), (-1.0, None), (10.0, 0.0)])
def test_periodic_compactor_rejects_bad_settings(period: float, interval: float | None) -> None:
    with pytest.raises(ValueError):
        PeriodicCompactor(period, interval)
