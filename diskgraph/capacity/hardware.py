"""The machine a plan is for, as one import: a hardware profile, measured (``diskgraph plan --calibrate``) or given
by flags.

The pieces live in modules of their own; this one re-exports what the CLI and other callers import from it:

* :mod:`~diskgraph.capacity.profile` — the profile file (its format), :class:`Hardware`, flags over it;
* :mod:`~diskgraph.capacity.probes` — the measurements of the disk, memory, gathers, read stage, process memory;
* :mod:`~diskgraph.capacity.compute` — model steps timed and fitted to the cost terms of :mod:`diskgraph.models`;
* :mod:`~diskgraph.capacity.calibration` — :func:`calibrate`, all of it in order, and how long it takes;
* :mod:`~diskgraph.capacity.fit`, :mod:`~diskgraph.capacity.timing` — the fits and timing rules they share.
"""

from __future__ import annotations

from .calibration import CALIBRATION_SECONDS, calibrate, calibration_seconds, duration_text
from .fit import nnls
from .profile import (OVERRIDES, PROFILE_ENV, PROFILE_FORMAT, PROFILE_VERSION, Hardware, apply_overrides,
                      default_profile_path, load_profile, save_profile)

__all__ = ["CALIBRATION_SECONDS", "OVERRIDES", "PROFILE_ENV", "PROFILE_FORMAT", "PROFILE_VERSION", "Hardware",
           "apply_overrides", "calibrate", "calibration_seconds", "default_profile_path", "duration_text",
           "load_profile", "nnls", "save_profile"]
