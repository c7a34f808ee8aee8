"""Behaviour-policy training (MAPPO, HAPPO) and dataset collection, and the environment adapters."""
