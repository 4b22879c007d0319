"""Jobs: one training run each (``router``, ``service``, ``repository``, ``schemas``)."""
