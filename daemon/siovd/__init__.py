"""siovd: the siov daemon (IOMMU + idxd-like accelerator behind a Unix socket)."""

__version__ = "0.1.0"
