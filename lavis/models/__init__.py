from lavis.models import eva_vit, pointbert  # noqa: F401  (register the "eva_vit" and "pointbert" encoders)
