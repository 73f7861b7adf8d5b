"""The one place that decides whether the C speedups run (prot/_speedups.c).

``C`` is the compiled module, or None: not built (no compiler or Python headers when wmproxy
was installed), or ``WMPROXY_NO_SPEEDUPS`` set (tests, or to rule C out). Every C function has
a Python twin giving the same answers (the tests compare them); the modules that have a twin
take the C one from here when there is one."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional

C: Optional[ModuleType] = None
DISABLED = bool(os.environ.get("WMPROXY_NO_SPEEDUPS"))
if not DISABLED:
    try:
        from . import _speedups as C
    except ImportError:
        C = None
