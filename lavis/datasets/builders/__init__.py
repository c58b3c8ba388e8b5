from lavis.datasets.builders import image_builders, instruction_builders, point_builders, vqa_builders  # noqa: F401  (register builders)
