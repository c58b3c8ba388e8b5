from lavis.processors import image_processors, point_processors, text_processors  # noqa: F401  (register processors)
