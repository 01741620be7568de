"""ebru's one set of default sampling settings, used wherever a caller does not choose.

``sample()``, the image pipeline, training previews, ``ebru eval`` and the model packages
that training writes all read these, so a default changes in one place.

- ``sampler = "dpmpp_2m"``, ``steps = 20``: DPM-Solver++(2M) is within 2 % of its 50-step
  FID at 10 steps on ebru's Fashion-MNIST model (``docs/results.md``); 20 leaves a margin.
- ``schedule = "karras"``: Karras et al. 2022, eq. 5, rho = 7.
- ``sigma_min = 0.002``, ``sigma_max = 80``: EDM's sampling range (Karras et al. 2022, Table 1);
  a VP model brings its own range from its ``alphas_cumprod`` (``vp_denoiser``).
- ``guidance_scale = 2.0``: the classifier-free guidance scale of class-conditional previews
  (88 % class agreement on the quickstart model, ``docs/results.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingDefaults:
    sampler: str = "dpmpp_2m"
    steps: int = 20
    schedule: str = "karras"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    guidance_scale: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAMPLING = SamplingDefaults()
