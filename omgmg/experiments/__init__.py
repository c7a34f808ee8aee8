"""Experiments: sweep specs (``spec``), running them locally or on Ray (``sweep``), and the paper's
tables and ablation figures from their results (``report``)."""
