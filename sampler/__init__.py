"""Offline neighbor sampling that writes plans, and hot-set selection (arrives with issue 3)."""
