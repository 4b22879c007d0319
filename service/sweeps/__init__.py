"""Sweeps: a search over a base spec, expanded into jobs (``router``, ``service``, ``repository``,
``schemas``, ``expansion``)."""
