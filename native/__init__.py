"""Hot kernels (numba, compiled on first use and cached on disk).

The bottom of the package stack: nothing here imports from the rest of diskgraph.
"""
