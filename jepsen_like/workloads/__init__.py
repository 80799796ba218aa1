"""Workloads by name.  Each module defines one class implementing
:class:`jepsen_like.workload.Workload`; they are imported on demand."""

from __future__ import annotations

import importlib

from jepsen_like.workload import Workload

#: workload name -> "module:Class"
WORKLOADS: dict[str, str] = {
    "register": "jepsen_like.workloads.register:RegisterWorkload",
    "set": "jepsen_like.workloads.set_workload:SetWorkload",
    "watch": "jepsen_like.workloads.watch:WatchWorkload",
    "lock": "jepsen_like.workloads.lock:LockWorkload",
    "lease": "jepsen_like.workloads.lease:LeaseWorkload",
}


def make_workload(name: str, **options: object) -> Workload:
    """A new workload called ``name``; ``KeyError`` names the known ones."""
    try:
        target = WORKLOADS[name]
    except KeyError:
        raise KeyError(
            f"unknown workload {name!r} (known: {', '.join(sorted(WORKLOADS))})"
        ) from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    workload: Workload = cls(**options)
    return workload
