"""ebru.provenance: what ebru attaches to its outputs (row 1: imports diffusion, trust, data, nets, checks).

- :mod:`ebru.provenance.watermark` — Gaussian Shading, the keyed multi-bit watermark in the initial
  noise, and its detector (probability-flow ODE inversion, then decoding with a binomial p-value).
- :mod:`ebru.provenance.treering` — Tree-Ring, the optional zero-bit second mark in the noise's low frequencies.
- :mod:`ebru.provenance.wmkeys` — watermark keys (``NAME.wmkey``, a 32-byte secret; the default key).
- :mod:`ebru.provenance.ca` — the local C2PA certificate authority (root + signer; ``ebru ca init``).
- :mod:`ebru.provenance.c2pa` — signed C2PA manifests on every PNG/JPEG written, and their verification.
- :mod:`ebru.provenance.record` — the generation record: audit log entry + DSSE-signed store by watermark id.
- :mod:`ebru.provenance.posthoc` — the post-hoc mark for images ebru did not make (tiled spread spectrum, sync
  template, convolutional code in :mod:`~ebru.provenance.convcode`); :mod:`~ebru.provenance.attacks` — the
  attack grid the benchmarks share; :mod:`~ebru.provenance.images` — bounded reading of a user's image.
- :mod:`ebru.provenance.detector` — the generated-image detector (p(generated) and a map of edited regions), a
  supporting signal only (:data:`~ebru.provenance.detector.SUPPORTING_SIGNAL`), and its threshold calibration.

Names are imported on first use (PEP 562), so that ``ebru provenance verify`` and ``ebru ca init``
start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ATTACKS": "attacks",
    "CAFiles": "ca",
    "DEFAULT_FPR": "watermark",
    "DEFAULT_ID_BITS": "watermark",
    "DETECTOR_FPR": "detector",
    "Decoded": "watermark",
    "Detector": "detector",
    "DetectorNet": "detector",
    "DetectorPrediction": "detector",
    "ENV_C2PA_DIR": "ca",
    "ENV_STORE": "record",
    "ENV_WATERMARK_KEY": "wmkeys",
    "GENERATION_LABEL": "c2pa",
    "GaussianShading": "watermark",
    "GenerationRecord": "record",
    "PosthocMark": "posthoc",
    "PosthocResult": "posthoc",
    "ProvenanceError": "errors",
    "SUPPORTING_SIGNAL": "detector",
    "SignedImage": "c2pa",
    "TreeRing": "treering",
    "TreeRingResult": "treering",
    "SigningIdentity": "ca",
    "Verdict": "c2pa",
    "WATERMARK_ALG": "c2pa",
    "WatermarkKey": "wmkeys",
    "apply_attack": "attacks",
    "apply_prompt_policy": "c2pa",
    "auroc": "detector",
    "binomial_sf": "watermark",
    "c2pa_dir": "ca",
    "c2pa_settings": "c2pa",
    "calibrate_threshold": "detector",
    "default_signer": "ca",
    "default_watermark_key": "wmkeys",
    "default_watermark_key_path": "wmkeys",
    "detect_watermark": "watermark",
    "find_by_id": "record",
    "find_by_sha256": "record",
    "fit_to_shape": "watermark",
    "generate_watermark_key": "wmkeys",
    "init_ca": "ca",
    "invert_to_noise": "watermark",
    "known_ids": "record",
    "load_identity": "ca",
    "load_watermark_key": "wmkeys",
    "log_binomial_sf": "watermark",
    "new_watermark_id": "watermark",
    "payload_accuracy": "watermark",
    "psnr": "posthoc",
    "record_generation": "record",
    "sign_image": "c2pa",
    "store_dir": "record",
    "verify_file": "c2pa",
    "watermark_key_id": "wmkeys",
    "write_detector": "detector",
    "write_signed_png": "c2pa",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
