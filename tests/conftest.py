"""Shared test configuration: Hypothesis profiles.

Profiles (choose with ``HYPOTHESIS_PROFILE``; default ``ci``):

* ``ci``: deterministic (``derandomize=True``, no example database), no
  deadline (simulations vary in cost), sized so the property suites finish in a
  few minutes on two cores.  Per-suite example counts can still be raised with
  the environment variables the suites document (``KVSTORE_PROPERTY_EXAMPLES``,
  ``KVSTORE_PROPERTY_STEPS``).
* ``dev``: random exploration with the example database, for local bug hunts.
* ``long``: like ``dev`` with many more examples, for soak runs.

Each profile is registered only if nobody registered it before.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.errors import InvalidArgument

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _register(name: str, **kwargs: object) -> None:
    try:
        settings.get_profile(name)
    except InvalidArgument:
        settings.register_profile(name, **kwargs)  # type: ignore[arg-type]


_register(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
_register("dev", deadline=None, print_blob=True, suppress_health_check=_SLOW_OK)
_register(
    "long",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
