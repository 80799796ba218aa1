"""``latency.png``: operation latency over time, coloured by outcome, faults shaded.

matplotlib is an optional extra (``pip install -e '.[jepsen]'``); without it
:func:`plot_latency` writes nothing and returns a one-line explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jepsen_like.history import Operation
from jepsen_like.nemesis.base import FaultEvent

__all__ = ["LatencyPoint", "latency_points", "plot_latency"]

_COLOURS = {"ok": "tab:green", "fail": "tab:red", "info": "tab:orange"}
_FAULT_COLOURS = {
    "kill": "tab:red",
    "pause": "tab:purple",
    "partition": "tab:blue",
    "corrupt": "tab:brown",
    "membership": "tab:olive",
}


@dataclass(frozen=True)
class LatencyPoint:
    """One completed operation: invoked at ``time`` s, took ``latency`` s."""

    time: float
    latency: float
    outcome: str
    f: str


def latency_points(history: Sequence[Operation]) -> list[LatencyPoint]:
    """Pair invocations with completions (per process, in order); pending ones are left out."""
    pending: dict[int, Operation] = {}
    points = []
    for ev in history:
        if ev.type == "invoke":
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        if inv is None:
            continue
        points.append(
            LatencyPoint(inv.time_ns / 1e9, (ev.time_ns - inv.time_ns) / 1e9, ev.type, inv.f)
        )
    return points


def plot_latency(
    history: Sequence[Operation], faults: Sequence[FaultEvent], path: Path, title: str
) -> str | None:
    """Write the plot to ``path``; returns why not (matplotlib missing) or ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "latency.png skipped: matplotlib is not installed "
            "(pip install -e '.[jepsen]' to get the plot)"
        )
    points = latency_points(history)
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        shaded: set[str] = set()
        for fault in faults:
            if fault.outcome in ("skipped", "error") or fault.end is None:
                continue
            label = None if fault.kind in shaded else fault.kind
            shaded.add(fault.kind)
            ax.axvspan(
                fault.start,
                max(fault.end, fault.start + 0.05),
                color=_FAULT_COLOURS.get(fault.kind, "tab:gray"),
                alpha=0.15,
                label=label,
            )
        for outcome, colour in _COLOURS.items():
            chosen = [p for p in points if p.outcome == outcome]
            if chosen:
                ax.scatter(
                    [p.time for p in chosen],
                    [max(p.latency * 1000, 0.01) for p in chosen],
                    s=4,
                    color=colour,
                    label=f"{outcome} ({len(chosen)})",
                    alpha=0.7,
                )
        ax.set_yscale("log")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize="small", markerscale=3)
        ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return None
