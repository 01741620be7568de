"""Trust for weights: verify a model package before anything reads it.

- :func:`load` — the one loader: manifest, signature, licence policy, strict read (``ebru.load``).
- :func:`verify` — the same checks without materialising tensors (``ebru verify``).
- :func:`write_package` — write a complete, atomic package from tensors; :func:`write_trained_package`
  — the same at the end of a training run (a key problem leaves the package written, unsigned).
- :func:`card_front_matter` — the model card's YAML front matter for a model ebru trained.
- :func:`package_dir` — write/refresh the manifest of weights brought in from elsewhere (``ebru package``).
- :func:`sign_package`, :func:`generate_key`, :class:`TrustedKeys` — keys and signatures (``ebru keys/sign``).
- :func:`pack`, :func:`unpack` — tar bundles for crossing a boundary (``ebru pack/unpack``).
- :func:`validate_file`, :func:`load_file` — the strict safetensors reader (``ebru inspect``).
- :mod:`ebru.trust.audit` — the hash-chained audit log (``ebru audit verify``).
- :mod:`ebru.trust.staging` — :class:`~ebru.trust.staging.Staged`, how every writer (packages,
  signatures, bundles, keys, training checkpoints) avoids half-written output and audits abandoned writes.
- :mod:`ebru.trust.redact` — key paths in configs become key IDs before anything is written.

The package layout is described in :mod:`ebru.trust.manifest`, the signature format in
:mod:`ebru.trust.signature`, the licence policy in :mod:`ebru.trust.license`, where settings
come from in :mod:`ebru.trust.settings`, and the rules for unsigned packages in
:mod:`ebru.trust.loader`. ``docs/security.md`` is the operator's guide.
"""

from .bundle import pack, unpack
from .card import ModelCard, card_front_matter, parse_card
from .errors import (
    AuditError,
    BundleError,
    CardError,
    IntegrityError,
    KeyFileError,
    LicenseError,
    PolicyError,
    SignatureError,
    TrustError,
    UnsafeFileError,
    UntrustedKeyError,
)
from .keys import SigningKey, TrustedKey, TrustedKeys, generate_key, load_public_key, load_signing_key
from .license import DEFAULT_POLICY_TOML, LicenseDecision, Policy, load_policy, parse_policy
from .loader import LoadedModel, load, verify
from .manifest import CARD, CONFIG, MANIFEST, SIGNATURE, WEIGHTS, Manifest
from .package import package_dir, sign_package, write_package, write_trained_package
from .safetensors_strict import SafetensorsInfo, TensorInfo, load_bytes, load_file, validate_bytes, validate_file

__all__ = [
    "CARD", "CONFIG", "DEFAULT_POLICY_TOML", "MANIFEST", "SIGNATURE", "WEIGHTS",
    "AuditError", "BundleError", "CardError", "IntegrityError", "KeyFileError", "LicenseDecision", "LicenseError",
    "LoadedModel", "Manifest", "ModelCard", "Policy", "PolicyError", "SafetensorsInfo", "SignatureError",
    "SigningKey", "TensorInfo", "TrustError", "TrustedKey", "TrustedKeys", "UnsafeFileError", "UntrustedKeyError",
    "card_front_matter", "generate_key", "load", "load_bytes", "load_file", "load_policy", "load_public_key",
    "load_signing_key", "pack", "package_dir", "parse_card", "parse_policy", "sign_package", "unpack",
    "validate_bytes", "validate_file", "verify", "write_package", "write_trained_package",
]
