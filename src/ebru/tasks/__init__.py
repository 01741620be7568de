"""ebru.tasks: one module per kind of training, each a :class:`Task` registered in :data:`TASKS`.

- ``image`` (:class:`ImageTask`): EDM-style denoiser training on images (every image recipe).
- ``text2image`` (:class:`TextToImageTask`): the same denoiser conditioned on captions through a
  frozen, verified text encoder (``ebru.encoders``), with caption dropout for guidance.
- ``progressive_distill`` (:class:`ProgressiveDistillTask`): one round of progressive distillation of an
  image model (the student takes N steps where its frozen teacher takes 2N); ``ebru distill`` runs the rounds.
- ``consistency_distill`` (:class:`ConsistencyDistillTask`): consistency tuning (ECT) of an image model, or
  consistency distillation of a guided one: a student that samples in one step or a few (``ebru distill``).
- ``autoencoder`` (:class:`AutoencoderTask`): a KL autoencoder (L1 + perceptual + KL), the first stage of latent
  diffusion; its package (``kind = "autoencoder"``) stores the latent scale factor computed from data.
- ``text`` (:class:`TextTask`): masked, uniform-noise or block diffusion language models, or the
  autoregressive baseline, on a text corpus.

``ebru.train.Trainer`` builds ``TASKS[cfg.task]`` and knows only the :class:`Task` protocol
(``ebru.tasks.base``). A new kind of training is one new module here that registers its class
with ``@TASKS.register("name")``, plus its import below.
"""

from .autoencoder import AutoencoderTask
from .base import TASKS, Task, TrainState, code_revision
from .consistency import ConsistencyDistillTask
from .distill import DistillTask, ProgressiveDistillTask
from .image import ImageTask
from .reflow import ReflowTask as ReflowTask  # registers "reflow" (reflow of flow models, ebru.tasks.reflow)
from .text import TextTask
from .text2image import TextToImageTask

__all__ = ["TASKS", "AutoencoderTask", "ConsistencyDistillTask", "DistillTask", "ImageTask", "ProgressiveDistillTask",
           "Task", "TextTask", "TextToImageTask", "TrainState", "code_revision"]
