"""ensemble-bench: WeightFormer, ensembles and distillation, from teacher pools to tables."""

__version__ = "0.1.0"
