"""What users call: end-to-end jobs built from the layers below.

- :class:`ImagePipeline` (``image``): unconditional and class-conditional image models.
- :class:`TextToImagePipeline` (``text2image``): text-to-image models with their verified text encoder.
- ``evaluate``, ``quickstart``, ``demo``, ``text``: the jobs behind ``ebru eval``, ``ebru quickstart``,
  ``ebru demo`` and ``ebru text``.
- ``distill`` (:func:`ebru.pipelines.distill.distill`): few-step students of image models (``ebru distill``).
"""

from .image import ImagePipeline
from .text2image import TextToImagePipeline

__all__ = ["ImagePipeline", "TextToImagePipeline"]
