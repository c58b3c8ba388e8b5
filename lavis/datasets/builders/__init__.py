from lavis.datasets.builders import image_builders, point_builders  # noqa: F401  (register dataset builders)
