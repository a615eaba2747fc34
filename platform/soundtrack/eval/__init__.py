"""Evaluation: the papers' metrics as plain numpy functions (``metrics``) and the benchmark runner."""
