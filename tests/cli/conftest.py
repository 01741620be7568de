"""Set-up for the ``ebru`` command-line tests.

- Isolation: trusted keys, licence policy, audit log and config directories live in the test's
  tmp_path; ``EBRU_DEBUG`` is cleared so that the one-line errors are what the tests see.
- ``image_model(classes=...)``: a tiny unsigned image package (8x8 grey, a U-Net with random weights), with
  class names that are not filesystem-safe (``T-shirt/top``) when class-conditional.
"""

from __future__ import annotations

import pytest
import torch

from ebru.nets import build_net
from ebru.trust import write_package

CLASS_NAMES = ["T-shirt/top", "Sneaker", "Bag"]
TINY_UNET = {"kind": "unet", "image_size": 8, "in_channels": 1, "out_channels": 1, "channels": 8,
             "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1}


def random_weights(net_cfg: dict) -> dict[str, torch.Tensor]:
    """Every weight drawn at random (seeded): an untrained net zeroes its output layer, and then its samples
    would not depend on the class or the guidance the tests ask for."""
    g = torch.Generator().manual_seed(0)
    return {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in build_net(net_cfg).state_dict().items()}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """``image_model(classes)`` -> the directory of a tiny image package (made once per module and kind)."""
    made = {}

    def make(classes: bool = True):
        if classes not in made:
            net_cfg = {**TINY_UNET, "num_classes": len(CLASS_NAMES) if classes else None}
            config = {"kind": "image-diffusion", "net": net_cfg, "precond": {"prediction": "edm", "sigma_data": 0.5},
                      "image_shape": [1, 8, 8], "num_classes": len(CLASS_NAMES) if classes else None,
                      "class_names": CLASS_NAMES if classes else None,
                      "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 2,
                                   "guidance": 1.5, "schedule": "karras"}}
            card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# tiny\n"
            path = tmp_path_factory.mktemp("models") / ("cond" if classes else "uncond")
            made[classes] = write_package(path, config, random_weights(net_cfg), card, {"created_by": "tests"})
        return made[classes]

    return make
