"""What layer-wise inference (:mod:`diskgraph.pipeline.layerwise`) reports: per layer (:class:`LayerStats`) and in
all (:class:`LayerwiseResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerStats:
    """What one layer did: seconds, partitions, bytes read (OS-counted) and the bytes of rows it needed."""

    layer: int
    seconds: float = 0.0
    partitions: int = 0
    slices_read: int = 0
    read_bytes: int = 0
    needed_bytes: int = 0
    table_bytes: int = 0
    destinations: int = 0
    edges: int = 0
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"layer": self.layer, "seconds": round(self.seconds, 4), "partitions": self.partitions,
                "slices_read": self.slices_read, "destinations": self.destinations, "edges": self.edges,
                "read_bytes": self.read_bytes, "needed_bytes": self.needed_bytes, "table_bytes": self.table_bytes,
                "read_amplification": round(self.read_bytes / self.needed_bytes, 4) if self.needed_bytes else None,
                **self.extra}


@dataclass
class LayerwiseResult:
    """What :func:`run_layerwise` did, per layer and in all."""

    layers: list[LayerStats]
    seconds: float
    read_bytes: int
    peak_rss_bytes: int
    resumed_after: int = 0

    def summary(self) -> dict:
        needed = sum(s.needed_bytes for s in self.layers)
        tables = sum(s.table_bytes for s in self.layers)
        return {"seconds": round(self.seconds, 4), "read_bytes": self.read_bytes, "needed_bytes": needed,
                "read_amplification": round(self.read_bytes / needed, 4) if needed else None,
                "table_bytes": tables, "table_passes": round(self.read_bytes / tables, 4) if tables else None,
                "peak_rss_bytes": self.peak_rss_bytes, "resumed_after_layer": self.resumed_after,
                "layers": [s.record() for s in self.layers]}
