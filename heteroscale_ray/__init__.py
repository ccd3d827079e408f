"""heteroscale-ray: coordinated P/D autoscaling on Ray (HeteroScale, arXiv 2508.19559)."""

__version__ = "0.1.0"
