"""Pure decision cores of the driver, workers and gateway (to come)."""
