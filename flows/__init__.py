"""Prefect flows and the ``aom`` command line: thin wiring over ``pipelines`` and ``aom_model``.

Nothing is re-exported: import the module you need (``flows.cli`` is the ``aom`` entry point; each
flow module, e.g. ``flows.ingest``, is a Prefect deployment entry point), so importing the package
stays free of Prefect.
"""

__all__: list[str] = []
