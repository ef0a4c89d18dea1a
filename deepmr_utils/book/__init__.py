"""The book's wing: what the chapters need and a library user does not.

``config`` (run sizes per scale, seeds, where chapters write results), ``claims`` (the hidden claim
cells and their ledger), ``simulation_study`` and ``challenges`` (the chapters' experiments),
``panels`` (the chapters' figures, tables and look) and ``datasets`` (the lipid example).

The library (every other module of ``deepmr_utils``) never imports from here; a test checks it.
"""
