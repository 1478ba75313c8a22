"""The Ray releases the workarounds in `gemini_ray.ray_compat` were tested on, and the guard each patch asks
before it changes how Ray behaves: outside these releases it logs one warning (naming the release and the
opt-out) and leaves Ray as shipped."""

from __future__ import annotations

import logging
import sys

__all__ = ["TESTED", "ray_version", "is_tested", "tested"]

TESTED = ("2.60",)
"""Ray releases (major.minor) every patch here was tested on; `tests/test_ray_compat.py` checks the installed one."""

logger = logging.getLogger("gemini_ray.ray_compat")
_warned: set[str] = set()


def ray_version() -> str:
    """The Ray release of this process (the imported module's, else the installed package's)."""
    ray = sys.modules.get("ray")
    if ray is not None and hasattr(ray, "__version__"):
        return ray.__version__
    from importlib.metadata import version

    return version("ray")


def is_tested() -> bool:
    """Whether this process runs a Ray release in TESTED."""
    return ".".join(ray_version().split(".")[:2]) in TESTED


def tested(what: str, opt_out: str) -> bool:
    """Whether the patch `what` may be applied here; outside TESTED, one warning per patch and process."""
    if is_tested():
        return True
    if what not in _warned:
        _warned.add(what)
        logger.warning("gemini_ray: %s was tested on Ray %s only; this is Ray %s, so Ray runs as shipped here "
                       "(%s)", what, ", ".join(TESTED), ray_version(), opt_out)
    return False
