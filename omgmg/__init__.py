"""OMGMG: Offline Multi-Agent RL with Global Moderate Generalization, and its baselines."""
__version__ = "0.1.0"
