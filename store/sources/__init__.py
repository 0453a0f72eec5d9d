"""Readers of a user's raw inputs: edges, node features, labels and splits.

Every reader streams: it yields slices of bounded size and never loads a whole
edge list or feature table. Every reader validates what it can see cheaply
(shape, dtype, size on disk) when it is opened, so bad input is refused before
any long work starts, with one sentence naming the file, the field and the fix.
"""
