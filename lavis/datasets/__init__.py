from lavis.datasets import builders  # noqa: F401  (registers dataset builders)
