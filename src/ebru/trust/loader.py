"""The one loader: ``ebru.load(MODEL_DIR)`` verifies a model package, then reads it.

Order of checks, each refusal naming the file and the reason:

1. **Manifest** — the directory is flat and holds regular files only (no links); every file is
   listed in ``manifest.json`` with its size and SHA-256, and matches it. Files are read once;
   the bytes that were hashed are the bytes that are parsed and loaded (no time-of-check /
   time-of-use gap). :meth:`LoadedModel.read` hands out those verified bytes for every other
   file of the package (a tokenizer, a licence), so nothing built on a loaded model needs to
   read the directory again.
2. **Signature** — see *Unsigned packages* below.
3. **Licence** — the card's licence and every licence along its ``base_model`` chain, against
   the licence policy (:mod:`ebru.trust.license`).
4. **Strict read** — ``config.json`` as strict JSON, ``model.safetensors`` through
   :mod:`ebru.trust.safetensors_strict` and only then the safetensors library. A
   ``modelspec.license`` in the weights' metadata that disagrees with the card is refused.

Every load and every refusal is appended to the audit log (:mod:`ebru.trust.audit`).

Unsigned packages
-----------------
*Trusted keys are configured* (``trusted_keys=`` / ``--trusted-keys``, ``EBRU_TRUSTED_KEYS``, or
at least one ``.pub`` in ``~/.config/ebru/trusted_keys``): a package must carry a signature by a
trusted, unexpired key. ``allow_unsigned=True`` (``--allow-unsigned``) accepts a package whose
origin cannot be established — no signature, or a signature by an unknown or expired key —
with a warning; it never accepts a signature that fails against a trusted key, nor a package
that fails its manifest.

*No trusted keys are configured*: packages load with a warning that their origin was not
checked. This keeps ``make quickstart`` followed by ``ebru sample ebru-out/model``
working for a newcomer, while an organisation turns on enforcement by installing its keys —
one directory, no code or flag changes — after which every unsigned load needs an explicit,
audited ``--allow-unsigned``. The manifest check, licence policy and strict read apply in both
cases.

*Whatever the key configuration*, a ``model.sig`` that is present is parsed strictly and
compared with the files it claims to cover: a malformed signature, or a package changed after
it was signed (a file added, removed or edited, ``manifest.json`` included), is refused. With
no trusted keys, a signature that matches its files loads with a warning naming its key ID,
which nothing here could check.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import audit
from .card import ModelCard, parse_card
from .errors import LicenseError, SignatureError, TrustError, UntrustedKeyError
from .keys import TrustedKey, TrustedKeys, resolve_trusted_keys
from .license import LicenseDecision, Policy, decide, load_policy
from .manifest import CARD, CONFIG, SIGNATURE, WEIGHTS, CheckedPackage, Manifest, check_package
from .safetensors_strict import SafetensorsInfo, load_bytes, validate_file
from .signature import check_signed_files, parse_bundle, verify_envelope
from .strict_json import loads

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class LoadedModel:
    """A verified model package. ``weights`` is empty when only verified (:func:`verify`).

    ``files`` holds the verified bytes of the package's files (``manifest.json`` and
    ``model.sig`` included) except the weights, which are in ``weights`` as tensors; read them
    with :meth:`read`. After :func:`verify` it holds only ``config.json``, ``MODEL_CARD.md`` and
    ``manifest.json``.
    """

    path: Path
    config: dict[str, Any]
    weights: dict[str, Tensor]
    metadata: dict[str, str]
    card: ModelCard
    manifest: Manifest
    manifest_sha256: str
    signer: TrustedKey | None
    license: LicenseDecision
    weights_info: SafetensorsInfo
    warnings: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def read(self, name: str) -> bytes:
        """The bytes of package file ``name`` exactly as they were hashed and verified; never read from disk again.

        Raises ``FileNotFoundError`` for a file the manifest does not list, and ``ValueError`` for
        the weights (use ``weights``) or for a file a :func:`verify` result does not keep.
        """
        if name in self.files:
            return self.files[name]
        where = self.path / name
        if name == WEIGHTS:
            raise ValueError(f"{where}: the verified weights are in LoadedModel.weights (tensors); their bytes "
                             "are not kept")
        if name in self.manifest.files:
            raise ValueError(f"{where}: not kept by ebru.trust.verify(); load the package with ebru.load to read it")
        raise FileNotFoundError(f"{where}: not in this package (its manifest does not list it)")

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def lineage(self) -> tuple[dict[str, Any], ...]:
        return self.manifest.lineage

    def lineage_entry(self, name: str) -> list[dict[str, Any]]:
        """The lineage a package derived from this one records: this model as ``name``, then its own lineage.

        Pass it to :func:`ebru.trust.write_package` (``lineage=``) and name ``name`` in the new
        card's ``base_model``; the new package then inherits this one's licences and obligations.
        """
        c = self.card
        me = {"name": name, "license": c.license, "license_name": c.license_name, "license_link": c.license_link,
              "base_model": list(c.base_model), "manifest_sha256": self.manifest_sha256}
        return [me, *self.manifest.lineage]


def _signature_step(pkg: CheckedPackage, trusted: TrustedKeys | None, allow_unsigned: bool,
                    warnings: list[str], label: str | None = None) -> TrustedKey | None:
    sig_path = pkg.path / SIGNATURE
    label = label or str(pkg.path)
    how_to_enforce = ("set EBRU_TRUSTED_KEYS or put .pub files in ~/.config/ebru/trusted_keys to require "
                      "signatures")
    if pkg.signature is None:
        if trusted is None:
            warnings.append(f"{label} is unsigned and no trusted keys are configured, so its origin was not checked "
                            f"({how_to_enforce})")
            return None
        if not allow_unsigned:
            raise SignatureError(sig_path, f"missing: the package is unsigned and trusted keys are configured "
                                           f"({trusted.source}); sign it with 'ebru sign' or pass --allow-unsigned")
        warnings.append(f"{label} is UNSIGNED; loaded only because unsigned packages were allowed")
        return None
    envelope = parse_bundle(pkg.signature, sig_path)  # a malformed model.sig is refused whatever the keys
    if trusted is not None:
        try:
            verified = verify_envelope(envelope, sig_path, trusted)
        except UntrustedKeyError as e:
            if not allow_unsigned:
                raise
            check_signed_files(envelope.claimed_digests(sig_path)[0], pkg.digests, sig_path)
            warnings.append(f"{e.reason}; loaded as unsigned because unsigned packages were allowed")
            return None
        check_signed_files(verified, pkg.digests, sig_path)
        return verified.signer
    # No keys to check who signed; what the signature claims to cover must still be these files.
    check_signed_files(envelope.claimed_digests(sig_path)[0], pkg.digests, sig_path)
    warnings.append(f"{label} is signed by key {envelope.key_id[:16]}…, but no trusted keys are configured, so the "
                    f"signature and the package's origin were not checked ({how_to_enforce})")
    return None


def _check(model_dir: str | os.PathLike, policy: Policy | str | os.PathLike | None,
           trusted_keys: TrustedKeys | str | os.PathLike | None, allow_unsigned: bool,
           acknowledge: tuple[str, ...] | list[str], materialise: bool) -> LoadedModel:
    d = Path(model_dir)
    warnings: list[str] = []
    pkg = check_package(d, keep={CONFIG, CARD}, keep_all=materialise)
    signer = _signature_step(pkg, resolve_trusted_keys(trusted_keys), allow_unsigned, warnings)
    card = parse_card(pkg.contents[CARD], d / CARD)
    decision = decide(card, pkg.manifest.lineage, load_policy(policy), d / CARD, acknowledge)
    config = loads(pkg.contents[CONFIG], d / CONFIG, "config")
    if not isinstance(config, dict):
        raise TrustError(d / CONFIG, "is not a JSON object")
    weights: dict[str, Tensor] = {}
    if materialise:
        weights, info = load_bytes(pkg.contents.pop(WEIGHTS), d / WEIGHTS)  # the bytes are not kept after this
    else:
        info = validate_file(d / WEIGHTS, stamp=pkg.stamps[WEIGHTS])  # the file that was hashed, unchanged
    spec = info.metadata.get("modelspec.license")
    card_licence = card.license_name.lower() if card.license == "other" and card.license_name else card.license
    if spec is not None and spec.strip().lower() != card_licence:
        raise LicenseError(d / WEIGHTS, f"metadata modelspec.license {spec!r} disagrees with the card's licence "
                                        f"{card_licence!r}")
    files = dict(pkg.contents)
    if pkg.signature is not None:
        files[SIGNATURE] = pkg.signature
    return LoadedModel(d, config, weights, dict(info.metadata), card, pkg.manifest, pkg.manifest_sha256, signer,
                       decision, info, warnings, files)


def _audited(event: str, model_dir: str | os.PathLike, run: Any, quiet: bool) -> LoadedModel:
    try:
        model = run()
    except (TrustError, OSError) as e:
        audit.record("refuse", {"action": event, "path": os.path.abspath(model_dir), "error": str(e),
                                "file": getattr(e, "path", None), "reason": getattr(e, "reason", str(e))})
        raise
    audit.record(event, {
        "path": os.path.abspath(model.path), "manifest_sha256": model.manifest_sha256,
        "signer": model.signer.key_id if model.signer else None, "license": model.license.to_json(),
        "warnings": model.warnings,
    })
    if not quiet:
        for w in model.warnings:
            print(f"ebru: warning: {w}", file=sys.stderr)
    return model


def load(model_dir: str | os.PathLike, policy: Policy | str | os.PathLike | None = None, *,
         trusted_keys: TrustedKeys | str | os.PathLike | None = None, allow_unsigned: bool = False,
         acknowledge: tuple[str, ...] | list[str] = (), quiet: bool = False) -> LoadedModel:
    """Verify and load a model package (see the module docstring for the checks and their order).

    ``policy``: a :class:`~ebru.trust.license.Policy`, a TOML path, or None for the policy in force.
    ``trusted_keys``: a directory of ``.pub`` files (or :class:`TrustedKeys`); None for the configured ones.
    ``allow_unsigned``: accept a package whose origin cannot be established, with a warning.
    ``acknowledge``: needs-acknowledgement licences accepted for this call, besides the policy's.
    Warnings go to stderr unless ``quiet``; they are also in ``LoadedModel.warnings`` and the audit log.
    """
    return _audited("load", model_dir, lambda: _check(model_dir, policy, trusted_keys, allow_unsigned,
                                                      acknowledge, materialise=True), quiet)


def verify(model_dir: str | os.PathLike, policy: Policy | str | os.PathLike | None = None, *,
           trusted_keys: TrustedKeys | str | os.PathLike | None = None, allow_unsigned: bool = False,
           acknowledge: tuple[str, ...] | list[str] = (), quiet: bool = False) -> LoadedModel:
    """Every check :func:`load` makes, without materialising tensors: ``verify`` passes iff ``load`` would."""
    return _audited("verify", model_dir, lambda: _check(model_dir, policy, trusted_keys, allow_unsigned,
                                                        acknowledge, materialise=False), quiet)


def verify_integrity(model_dir: str | os.PathLike, *, trusted_keys: TrustedKeys | str | os.PathLike | None = None,
                     allow_unsigned: bool = False, label: str | None = None, licence: bool = False,
                     policy: Policy | str | os.PathLike | None = None,
                     acknowledge: tuple[str, ...] | list[str] = (),
                     ) -> tuple[CheckedPackage, TrustedKey | None, list[str]]:
    """Manifest, signature and strict weights structure (for pack/unpack); with ``licence``, the policy too.

    With ``licence=True`` the card's licence (and its ``base_model`` chain) is decided under ``policy``
    (None: the policy in force) exactly as :func:`load` does, and a refusal raises ``LicenseError``.
    """
    d = Path(model_dir)
    warnings: list[str] = []
    pkg = check_package(d, keep={CARD} if licence else frozenset())
    signer = _signature_step(pkg, resolve_trusted_keys(trusted_keys), allow_unsigned, warnings, label)
    if licence:
        decide(parse_card(pkg.contents[CARD], d / CARD), pkg.manifest.lineage, load_policy(policy), d / CARD,
               acknowledge)
    validate_file(d / WEIGHTS, stamp=pkg.stamps[WEIGHTS])
    return pkg, signer, warnings


__all__ = ["LoadedModel", "load", "verify", "verify_integrity"]
