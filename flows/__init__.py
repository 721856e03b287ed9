"""Prefect flows and the ``aom`` command line: thin wiring over ``pipelines`` and ``aom_model``."""
