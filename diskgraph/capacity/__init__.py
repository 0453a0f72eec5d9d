"""The capacity planner behind ``diskgraph plan``: disk footprint, memory and epoch time before anything runs.

* :mod:`~diskgraph.capacity.hardware` — the machine: a hardware profile measured by
  :func:`~diskgraph.capacity.hardware.calibrate` (O_DIRECT disk reads and writes, memory bandwidth,
  row gathers, the loader's per-minibatch CPU work, model steps) or given by flags, saved as JSON.
* :mod:`~diskgraph.capacity.workload` — the work: a small number of minibatches sampled from the real
  graph (the very minibatches the plan will hold) or from a synthetic graph drawn from a summary, and
  the hot sets and extents they imply.
* :mod:`~diskgraph.capacity.estimate` — sizes, memory and times from the two, each with how it was derived.
* :mod:`~diskgraph.capacity.report` — the table, the JSON object and the plot.
"""
