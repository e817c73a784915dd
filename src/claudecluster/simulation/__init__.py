"""The deterministic simulator: the driver in a simulated cluster on a virtual clock, and
the scenarios of ``claudecluster simulate`` (data in ``simulations/``)."""
