"""attent: nonparametric teaching (AtteNT) of attention learners on fused per-example scores."""
__version__ = "0.1.0"
