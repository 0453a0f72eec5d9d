"""On-disk formats and their readers/writers: datasets (this issue), plans and packed shards (later).

Installed as ``diskgraph.store``. Imports only from ``diskgraph.native``.
"""
