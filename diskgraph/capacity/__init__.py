"""The capacity planner behind ``diskgraph plan``: disk footprint, memory and epoch time before anything runs.

* :mod:`~diskgraph.capacity.profile` — the machine: a hardware profile measured by
  :func:`~diskgraph.capacity.calibration.calibrate` (:mod:`~diskgraph.capacity.probes`: O_DIRECT disk reads and
  writes, memory bandwidth, row gathers, the loader's per-minibatch CPU work, process memory;
  :mod:`~diskgraph.capacity.compute`: model steps fitted to the models' cost terms) or given by flags, saved as
  JSON. :mod:`~diskgraph.capacity.hardware` re-exports the profile and calibration API in one import.
* :mod:`~diskgraph.capacity.workload` — the work: a small number of minibatches sampled from the real
  graph (the very minibatches the plan will hold) or from a synthetic graph drawn from a summary, and
  the hot sets and extents they imply.
* :mod:`~diskgraph.capacity.estimate` — sizes, memory and times from the two, each with how it was derived.
* :mod:`~diskgraph.capacity.report` — the table, the JSON object and the plot.
"""
