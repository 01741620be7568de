"""ebru.provenance: what ebru attaches to its outputs (row 1: imports diffusion, trust, data, nets, checks).

- :mod:`ebru.provenance.watermark` — Gaussian Shading, the keyed multi-bit watermark in the initial
  noise, and its detector (probability-flow ODE inversion, then decoding with a binomial p-value).
- :mod:`ebru.provenance.wmkeys` — watermark keys (``NAME.wmkey``, a 32-byte secret; the default key).
- :mod:`ebru.provenance.ca` — the local C2PA certificate authority (root + signer; ``ebru ca init``).
- :mod:`ebru.provenance.c2pa` — signed C2PA manifests on every PNG/JPEG written, and their verification.
- :mod:`ebru.provenance.record` — the generation record: audit log entry + DSSE-signed store by watermark id.
"""

from .watermark import (
    DEFAULT_FPR,
    DEFAULT_ID_BITS,
    Decoded,
    GaussianShading,
    binomial_sf,
    detect_watermark,
    fit_to_shape,
    log_binomial_sf,
    new_watermark_id,
    payload_accuracy,
)
from .wmkeys import (
    ENV_WATERMARK_KEY,
    WatermarkKey,
    default_watermark_key,
    default_watermark_key_path,
    generate_watermark_key,
    load_watermark_key,
    watermark_key_id,
)

__all__ = [
    "DEFAULT_FPR",
    "DEFAULT_ID_BITS",
    "ENV_WATERMARK_KEY",
    "Decoded",
    "GaussianShading",
    "WatermarkKey",
    "binomial_sf",
    "default_watermark_key",
    "default_watermark_key_path",
    "detect_watermark",
    "fit_to_shape",
    "generate_watermark_key",
    "load_watermark_key",
    "log_binomial_sf",
    "new_watermark_id",
    "payload_accuracy",
    "watermark_key_id",
]

# C2PA manifests with a local CA, and the generation record (ca.py, c2pa.py, record.py, errors.py)
from .c2pa import (
    GENERATION_LABEL,
    WATERMARK_ALG,
    SignedImage,
    Verdict,
    apply_prompt_policy,
    c2pa_settings,
    sign_image,
    verify_file,
    write_signed_png,
)
from .ca import ENV_C2PA_DIR, CAFiles, SigningIdentity, c2pa_dir, default_signer, init_ca, load_identity
from .errors import ProvenanceError
from .record import (
    ENV_STORE,
    GenerationRecord,
    find_by_id,
    find_by_sha256,
    known_ids,
    record_generation,
    store_dir,
)

__all__ += [
    "ENV_C2PA_DIR",
    "ENV_STORE",
    "GENERATION_LABEL",
    "WATERMARK_ALG",
    "CAFiles",
    "GenerationRecord",
    "ProvenanceError",
    "SignedImage",
    "SigningIdentity",
    "Verdict",
    "apply_prompt_policy",
    "c2pa_dir",
    "c2pa_settings",
    "default_signer",
    "find_by_id",
    "find_by_sha256",
    "init_ca",
    "known_ids",
    "load_identity",
    "record_generation",
    "sign_image",
    "store_dir",
    "verify_file",
    "write_signed_png",
]

# The post-hoc mark for images ebru did not generate, and the attack grid (posthoc.py, convcode.py, attacks.py)
from .attacks import ATTACKS, apply_attack  # noqa: E402
from .posthoc import PosthocMark, PosthocResult, psnr  # noqa: E402

__all__ += ["ATTACKS", "PosthocMark", "PosthocResult", "apply_attack", "psnr"]
