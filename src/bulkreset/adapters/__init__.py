"""Shipped adapters for the three ports.

* :mod:`bulkreset.adapters.memory` — in-process dictionaries, for tests and notebooks.
* :mod:`bulkreset.adapters.sqlite` — one SQLite file, the embedded default.
"""
