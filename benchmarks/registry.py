"""Finds the benchmark cases: every module `benchmarks/<suite>_*.py` exposes a list `CASES`.

Adding an op family (modulated_conv2d, conv_norm_act, losses, ...) is adding `ops_<family>.py`; adding a
training-step benchmark is adding `train_<model>.py`. The runner never changes.
"""
import importlib
import pkgutil
from pathlib import Path

SUITES = ("ops", "train")
PACKAGE_DIR = Path(__file__).resolve().parent


def case_modules(suite):
    """Names of the modules of `suite`, sorted so runs are always in the same order."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]) if m.name.startswith(f"{suite}_"))


def discover(suites=SUITES):
    """All cases of `suites` (a name or a sequence of names), in module order; names must be unique."""
    if isinstance(suites, str):
        suites = SUITES if suites == "all" else (suites,)
    cases, seen = [], set()
    for suite in suites:
        for module_name in case_modules(suite):
            module = importlib.import_module(f"{__package__}.{module_name}")
            for case in getattr(module, "CASES", ()):
                if case.name in seen:
                    raise ValueError(f"duplicate benchmark case name {case.name!r} (in {module_name})")
                seen.add(case.name)
                cases.append(case)
    return cases
