"""C2PA manifests on ebru's outputs, signed with a local CA and verified against it, offline.

Built on ``c2pa-python`` (the C2PA SDK c2pa-rs behind a Python API; trust.md section 4). Every PNG or
JPEG ebru writes carries one manifest (:func:`sign_image`, :func:`write_signed_png`):

- a ``c2pa.actions.v2`` assertion with ``c2pa.created`` and digital source type
  ``trainedAlgorithmicMedia`` (Builder intent CREATE), plus ``c2pa.watermarked`` when a watermark
  was embedded;
- :data:`GENERATION_LABEL` (``org.ebru.generation``): the model package's manifest digest and licence,
  the generation parameters (sampler, steps, guidance, seed, ...; the prompt, or only its SHA-256, by
  ``prompt_policy``) and the watermark's algorithm, id and key id (never the key);
- ``c2pa.soft-binding``: the watermark id under ebru's algorithm name (:data:`WATERMARK_ALG`), so a copy
  stripped of its manifest can be tied back to it (the record store, :mod:`ebru.provenance.record`);
- claim generator ``ebru <version>``; no thumbnail (the image is small, and is the asset itself).

Nothing here touches the network: :func:`c2pa_settings` turns off remote-manifest fetch and OCSP fetch
and allows no network host at all (``core.allowed_network_hosts = []``); signing uses no timestamp
authority (``ta_url=None``). A file whose manifest lives at a URL is reported, never fetched.

:func:`verify_file` gives a :class:`Verdict`: ``Trusted`` (valid and signed under a trusted root, by
default the local ``root.pem``), ``Valid`` (intact, but the signer is not under that root), ``Invalid``
(the image or manifest was altered or damaged) or ``None`` (no manifest). Besides c2pa-rs's checks,
the image must decode with Pillow and, for PNG, every chunk's CRC must match: c2pa-rs alone accepts a
single flipped byte in about 30 % of the manifest's own bytes (box headers, padding: bytes no signature
covers), and the CRCs catch every one (measured by flipping every byte of a signed 28x28 PNG in turn:
all Invalid). A JPEG has no checksums; there, the local record store closes the gap on the
machine that wrote the file (the file's SHA-256 must be the one recorded under its manifest label),
and elsewhere such a flip still verifies, as it does in any C2PA validator (the pixels and every
signed byte stay covered).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import c2pa as _c2pa
import numpy as np
from PIL import Image

from ebru import __version__
from ebru.checks import one_of
from ebru.trust.staging import Staged

from .ca import SigningIdentity, c2pa_dir, default_signer, parse_chain
from .errors import ProvenanceError
from .record import GenerationRecord, find_by_id, json_clean, record_generation

GENERATION_LABEL = "org.ebru.generation"
SOFT_BINDING_LABEL = "c2pa.soft-binding"
WATERMARK_ALG = "org.ebru.gaussian-shading.1"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PROMPT_POLICIES = ("hash", "full", "omit")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
STATES = ("Trusted", "Valid", "Invalid", "None")


def c2pa_settings(anchors_pem: bytes | str | None = None) -> dict[str, Any]:
    """The c2pa-rs settings ebru uses: offline (no remote manifests, no OCSP, no network host), no thumbnail.

    ``anchors_pem``: root certificates (PEM) added to the built-in trust list as ``trust.user_anchors``.
    """
    s: dict[str, Any] = {
        "core": {"allowed_network_hosts": []},  # an empty allow-list: c2pa-rs may contact no host at all
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        "builder": {"claim_generator_info": {"name": "ebru", "version": __version__},
                    "thumbnail": {"enabled": False}},
    }
    if anchors_pem is not None:
        s["trust"] = {"user_anchors": anchors_pem.decode("ascii") if isinstance(anchors_pem, bytes) else anchors_pem}
    return s


def _context(anchors_pem: bytes | str | None = None) -> _c2pa.Context:
    return _c2pa.Context.from_dict(c2pa_settings(anchors_pem))


_SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def sniff_format(data: bytes) -> str | None:
    """``"png"`` or ``"jpeg"`` from the first bytes, else None."""
    return next((fmt for fmt, sig in _SIGNATURES.items() if data.startswith(sig)), None)


def _one_byte_off(data: bytes) -> str | None:
    """The format whose signature ``data`` misses by exactly one byte (a damaged PNG or JPEG), else None."""
    return next((fmt for fmt, sig in _SIGNATURES.items()
                 if len(data) >= len(sig) and sum(a != b for a, b in zip(sig, data)) == 1), None)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------- what goes into the manifest


def apply_prompt_policy(parameters: Mapping[str, Any], prompt: str | None, policy: str = "hash",
                        negative_prompt: str | None = None) -> dict[str, Any]:
    """``parameters`` plus the prompt as the policy allows: ``hash`` (default) adds ``prompt_sha256`` (SHA-256 of
    the UTF-8 prompt), ``full`` adds ``prompt`` and ``prompt_sha256``, ``omit`` adds neither; the same for
    ``negative_prompt``. ``prompt_policy`` is always recorded. ``ValueError`` for an unknown policy, or a
    ``prompt`` already inside ``parameters`` (pass it as ``prompt=``, so the policy applies to it)."""
    one_of("prompt_policy", policy, PROMPT_POLICIES)
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be a mapping (sampler, steps, guidance, seed, ...), got "
                         f"{type(parameters).__name__}")
    for k in ("prompt", "negative_prompt", "prompt_sha256", "negative_prompt_sha256"):
        if k in parameters:
            raise ValueError(f"parameters hold {k!r}: pass the prompt as prompt= (and negative_prompt=) so that "
                             "prompt_policy decides what is recorded")
    out = dict(parameters)
    for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{key} must be a string, got {type(text).__name__}")
        if policy in ("hash", "full"):
            out[f"{key}_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if policy == "full":
            out[key] = text
    out["prompt_policy"] = policy
    return json_clean(out, "parameters")


def generation_assertion(*, model_digest: str, license: Any, parameters: Mapping[str, Any],
                         watermark_id: int | None = None, watermark_key_id: str | None = None,
                         watermark_alg: str = WATERMARK_ALG) -> dict[str, Any]:
    """The ``org.ebru.generation`` assertion's data (``parameters`` already through :func:`apply_prompt_policy`)."""
    if not isinstance(model_digest, str) or not model_digest.strip():
        raise ValueError(f"model_digest must be the model package's manifest digest (a string), got {model_digest!r}")
    if watermark_id is not None and (isinstance(watermark_id, bool) or not isinstance(watermark_id, int)
                                     or watermark_id < 0):
        raise ValueError(f"watermark_id must be an integer >= 0, got {watermark_id!r}")
    wm = None if watermark_id is None else {"alg": watermark_alg, "id": watermark_id, "key_id": watermark_key_id}
    return {"generator": {"name": "ebru", "version": __version__},
            "model": {"digest": model_digest, "license": json_clean(license, "license")},
            "parameters": json_clean(dict(parameters), "parameters"),
            "watermark": wm}


def manifest_definition(assertion: Mapping[str, Any]) -> dict[str, Any]:
    """The Builder's manifest definition: the ebru assertion, and the soft binding when there is a watermark."""
    assertions = [{"label": GENERATION_LABEL, "data": dict(assertion)}]
    wm = assertion.get("watermark")
    if wm is not None:
        assertions.append({"label": SOFT_BINDING_LABEL,
                           "data": {"alg": wm["alg"], "blocks": [{"scope": {}, "value": str(wm["id"])}]}})
    return {"claim_generator_info": [{"name": "ebru", "version": __version__}], "assertions": assertions}


# --------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class SignedImage:
    """An image written with its manifest: ``path``, the manifest ``label`` (``urn:c2pa:...``), the file's
    ``sha256``, the active ``manifest`` as c2pa-rs reads it back, and the generation ``record`` when one was made."""

    path: Path
    label: str
    sha256: str
    manifest: dict[str, Any] = field(repr=False)
    record: GenerationRecord | None = field(default=None, repr=False)


def _parse_store(store: Any) -> tuple[str, dict[str, Any], str | None, dict[str, Any]]:
    """``(validation state, results, active label, active manifest)`` from a Reader's JSON, tolerating holes
    (a damaged store may name an active manifest it does not hold)."""
    store = store if isinstance(store, dict) else {}
    label = store.get("active_manifest")
    manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
    manifest = manifests.get(label) if isinstance(manifests.get(label), dict) else {}
    results = store.get("validation_results") if isinstance(store.get("validation_results"), dict) else {}
    state = store.get("validation_state") if isinstance(store.get("validation_state"), str) else "Invalid"
    return state, results, label if isinstance(label, str) else None, manifest


def _signed_bytes(data: bytes, fmt: str, definition: Mapping[str, Any], identity: SigningIdentity,
                  where: str | os.PathLike, intent: str = "create",
                  parent: bytes | None = None) -> tuple[bytes, str, dict[str, Any]]:
    """Sign ``data`` in memory; read the result back and insist it validates (Trusted when the root is known).

    ``intent``: ``"create"`` (a generated image: ``c2pa.created``, digital source type
    ``trainedAlgorithmicMedia``) or ``"edit"`` (an existing image ebru changed, e.g. marked: the SDK adds
    the source as the parent ingredient, keeping any manifest it already had, and ``c2pa.opened``).
    ``parent``: with ``"edit"``, the original file's bytes (PNG or JPEG) to name as the parent ingredient
    instead of ``data`` itself (its own manifest, if any, is kept in the new one's ingredients)."""
    mime = MIME_TYPES[fmt]
    info = _c2pa.C2paSignerInfo(alg=_c2pa.C2paSigningAlg.ES256, sign_cert=identity.chain_pem,
                                private_key=identity.key_pem, ta_url=None)
    out = io.BytesIO()
    try:
        with _c2pa.Signer.from_info(info) as signer, _c2pa.Builder(dict(definition), _context()) as b:
            if intent == "edit":
                b.set_intent(_c2pa.C2paBuilderIntent.EDIT)
                parent_fmt = sniff_format(parent) if parent is not None else None
                if parent_fmt is not None:
                    b.add_ingredient({"title": Path(where).name, "relationship": "parentOf"},
                                     MIME_TYPES[parent_fmt], io.BytesIO(parent))
            else:
                b.set_intent(_c2pa.C2paBuilderIntent.CREATE, _c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA)
            if definition["assertions"][0]["data"].get("watermark") is not None:
                b.add_action({"action": "c2pa.watermarked",
                              "parameters": {"alg": definition["assertions"][0]["data"]["watermark"]["alg"]}})
            b.sign(signer, mime, io.BytesIO(data), out)
    except _c2pa.C2paError as e:
        raise ProvenanceError(where, f"C2PA signing failed: {_one_line(e)}") from None
    signed = out.getvalue()
    try:
        with _c2pa.Reader(mime, io.BytesIO(signed), context=_context(identity.root_pem)) as r:
            state, _, label, manifest = _parse_store(json.loads(r.json()))
    except (_c2pa.C2paError, ValueError) as e:
        raise ProvenanceError(where, f"the manifest just signed cannot be read back: {_one_line(e)}") from None
    wanted = "Trusted" if identity.root_pem is not None else "Valid"
    if state != wanted or not label or not manifest:
        raise ProvenanceError(where, f"the manifest just signed validates as {state}, not {wanted}; nothing was "
                                     "written (check the signer with 'ebru provenance verify')")
    return signed, label, manifest


def _image_bytes(src: bytes | str | os.PathLike) -> tuple[bytes, str]:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src), "<image bytes>"
    try:
        return Path(src).read_bytes(), os.fspath(src)
    except OSError as e:
        raise ProvenanceError(src, f"cannot read the image ({e.strerror})") from None


def _check_mime(data: bytes, mime: str | None, where: str | os.PathLike) -> str:
    fmt = sniff_format(data)
    if fmt is None:
        raise ProvenanceError(where, "not a PNG or JPEG image (ebru signs PNG and JPEG)")
    if mime is not None:
        one_of("mime", mime, MIME_TYPES.values())
        if mime != MIME_TYPES[fmt]:
            raise ValueError(f"{where}: mime {mime!r} given, but the bytes are {MIME_TYPES[fmt]}")
    return fmt


def _sign_and_publish(data: bytes, fmt: str, dst: str | os.PathLike, *, model_digest: str, license: Any,
                      parameters: Mapping[str, Any], prompt: str | None, negative_prompt: str | None,
                      prompt_policy: str, watermark_id: int | None, watermark_key_id: str | None,
                      watermark_alg: str, identity: SigningIdentity | None, record: bool,
                      store: str | os.PathLike | None, audit_log: str | os.PathLike | None,
                      intent: str = "create", parent: bytes | None = None) -> SignedImage:
    params = apply_prompt_policy(parameters, prompt, prompt_policy, negative_prompt)
    assertion = generation_assertion(model_digest=model_digest, license=license, parameters=params,
                                     watermark_id=watermark_id, watermark_key_id=watermark_key_id,
                                     watermark_alg=watermark_alg)
    identity = identity or default_signer(create=True)
    dst = Path(dst)
    rec = None
    with Staged("generation" if record else "c2pa-sign", dst) as op:
        signed, label, manifest = _signed_bytes(data, fmt, manifest_definition(assertion), identity, dst, intent,
                                                parent)
        sha = hashlib.sha256(signed).hexdigest()
        tmp = op.stage_file(dst, signed, 0o644)  # fsynced, beside dst
        if record:  # before the rename: a generation that cannot be recorded leaves no file
            rec = record_generation(dst, sha, watermark_id, watermark_key_id, model_digest, license, params, label,
                                    manifest=manifest, watermark_alg=watermark_alg if watermark_id is not None
                                    else None, identity=identity, store=store, audit_log=audit_log)
        op.publish_file(tmp, dst)
    return SignedImage(dst, label, sha, manifest, rec)


def sign_image(src: bytes | str | os.PathLike, dst: str | os.PathLike, *, mime: str | None = None,
               model_digest: str, license: Any, parameters: Mapping[str, Any], prompt: str | None = None,
               negative_prompt: str | None = None, prompt_policy: str = "hash", watermark_id: int | None = None,
               watermark_key_id: str | None = None, watermark_alg: str = WATERMARK_ALG,
               identity: SigningIdentity | None = None, record: bool = False,
               store: str | os.PathLike | None = None, audit_log: str | os.PathLike | None = None,
               intent: str = "create", parent: bytes | None = None) -> SignedImage:
    """Write ``src`` (PNG or JPEG bytes, or a path) to ``dst`` with a signed C2PA manifest (module docstring).

    ``mime``: ``"image/png"`` or ``"image/jpeg"``; checked against the bytes when given. ``model_digest``:
    the model package's manifest SHA-256 (``ebru.trust``'s ``manifest_sha256``); ``license``: its licence
    (an SPDX id or the policy's decision as a dict); ``parameters``: JSON values (sampler, steps, guidance,
    seed, ...); ``prompt``/``negative_prompt`` go in by ``prompt_policy`` (:func:`apply_prompt_policy`);
    ``watermark_id``/``watermark_key_id``: the id embedded in the image and the key's id (for the soft
    binding). ``identity``: the signer (default :func:`ebru.provenance.ca.default_signer`, made on first use).
    ``record``: also record the generation (:func:`ebru.provenance.record.record_generation`, DSSE-signed by
    the same signer) in the audit log and the store (``store``/``audit_log`` override their defaults).
    ``intent``: ``"create"`` (default: ebru generated the image) or ``"edit"`` (ebru changed an existing image,
    e.g. ``ebru watermark embed``: the source becomes the manifest's parent ingredient, no
    ``trainedAlgorithmicMedia`` claim); ``parent``: with ``"edit"``, the original file's bytes, named as the
    parent ingredient when they are PNG or JPEG (else the SDK names ``src`` itself).

    Atomic: the signed bytes go to a temporary file beside ``dst`` and are renamed onto it once complete
    (and recorded), so ``dst`` never exists without its manifest; on any failure nothing is left there,
    a previous file of that name stays, and the audit log gets a ``refuse`` or ``abandon`` entry. Before
    writing, the signed result is read back and must validate (Trusted when the signer's root is known).
    Returns the :class:`SignedImage` (its ``label`` is the manifest label). Raises :class:`ProvenanceError`
    (not an image, signing refused), ``ValueError`` (bad argument), :class:`~ebru.trust.errors.AuditError`
    (with ``record``, an audit log that cannot be written), ``OSError``.
    """
    data, where = _image_bytes(src)
    fmt = _check_mime(data, mime, where)
    one_of("intent", intent, ("create", "edit"))
    return _sign_and_publish(data, fmt, dst, model_digest=model_digest, license=license, parameters=parameters,
                             prompt=prompt, negative_prompt=negative_prompt, prompt_policy=prompt_policy,
                             watermark_id=watermark_id, watermark_key_id=watermark_key_id,
                             watermark_alg=watermark_alg, identity=identity, record=record, store=store,
                             audit_log=audit_log, intent=intent, parent=parent)


def _png_bytes(image: Any) -> bytes:
    if isinstance(image, Image.Image):
        img = image
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"the image must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got dtype "
                             f"{arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
            raise ValueError(f"the image must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape "
                             f"{tuple(arr.shape)}")
        img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_signed_png(image: Any, dst: str | os.PathLike, *, model_digest: str, license: Any,
                     parameters: Mapping[str, Any], prompt: str | None = None, negative_prompt: str | None = None,
                     prompt_policy: str = "hash", watermark_id: int | None = None,
                     watermark_key_id: str | None = None, watermark_alg: str = WATERMARK_ALG,
                     identity: SigningIdentity | None = None, record: bool = True,
                     store: str | os.PathLike | None = None, audit_log: str | os.PathLike | None = None
                     ) -> SignedImage:
    """The one call for pipelines: encode ``image`` as PNG, sign it, record it, and only then put it at ``dst``.

    ``image``: a PIL image or a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (e.g.
    ``ebru.data.grid.to_uint8(x)[i].numpy()``). The other arguments are :func:`sign_image`'s, except that
    ``record`` defaults to True: the generation goes to the audit log and the store *before* the file is
    renamed into place, so if recording fails no file appears. Returns the :class:`SignedImage` with its
    ``record``. Raises as :func:`sign_image`; ``ValueError`` for a bad image or a name not ending in .png.
    """
    if Path(dst).suffix.lower() != ".png":
        raise ValueError(f"{dst}: write_signed_png writes PNG; give a .png name")
    return _sign_and_publish(_png_bytes(image), "png", dst, model_digest=model_digest, license=license,
                             parameters=parameters, prompt=prompt, negative_prompt=negative_prompt,
                             prompt_policy=prompt_policy, watermark_id=watermark_id,
                             watermark_key_id=watermark_key_id, watermark_alg=watermark_alg, identity=identity,
                             record=record, store=store, audit_log=audit_log)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verify_file`: ``state`` in :data:`STATES`, the ``reasons`` (one line each; empty
    when Trusted, unless the manifest lacks ebru's assertion), the ``manifest`` summary (None when there is
    no readable manifest) and the ``anchors`` used (a path, or None for none)."""

    path: str
    state: str
    reasons: tuple[str, ...] = ()
    manifest: dict[str, Any] | None = None
    anchors: str | None = None

    @property
    def trusted(self) -> bool:
        return self.state == "Trusted"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "state": self.state, "reasons": list(self.reasons), "manifest": self.manifest,
                "anchors": self.anchors}


def _summary(manifest: Mapping[str, Any], label: str | None) -> dict[str, Any]:
    assertions = {a.get("label"): a.get("data") for a in manifest.get("assertions", []) if isinstance(a, dict)}
    actions = []
    for key in ("c2pa.actions.v2", "c2pa.actions"):
        for a in (assertions.get(key) or {}).get("actions", []):
            actions.append({k: a[k] for k in ("action", "digitalSourceType") if k in a})
    gens = manifest.get("claim_generator_info") or []
    sig = manifest.get("signature_info") or {}
    return {
        "label": label,
        "claim_generator": ", ".join(f"{g.get('name')} {g.get('version', '')}".strip() for g in gens
                                     if isinstance(g, dict)),
        "signer": {"common_name": sig.get("common_name"), "issuer": sig.get("issuer"), "alg": sig.get("alg")},
        "actions": actions,
        "generation": assertions.get(GENERATION_LABEL),
        "soft_binding": assertions.get(SOFT_BINDING_LABEL),
    }


def _resolve_anchors(anchors: bytes | str | os.PathLike | None) -> tuple[bytes | None, str | None]:
    """``(PEM, name)`` of the trust anchors; ``(None, None)`` when the default local root does not exist."""
    if isinstance(anchors, bytes):
        pem, name = anchors, "<given PEM>"
    else:
        p = Path(anchors) if anchors is not None else c2pa_dir() / "root.pem"
        try:
            pem, name = p.read_bytes(), str(p)
        except FileNotFoundError:
            if anchors is None:
                return None, None
            raise ProvenanceError(p, "trust anchors file not found") from None
        except OSError as e:
            raise ProvenanceError(p, f"cannot read the trust anchors ({e.strerror})") from None
    parse_chain(pem, name)  # a clear line for a file that is not PEM certificates, before c2pa-rs sees it
    return pem, name


def _check_image(data: bytes, fmt: str, where: str) -> str | None:
    """Decode with Pillow (``data`` has a PNG or JPEG signature): ``ProvenanceError`` for a decompression bomb;
    else a one-line damage reason, or None for an intact image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                if fmt == "png":
                    im.verify()  # every chunk's CRC, up to IEND
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProvenanceError(where, f"refused: the image's size exceeds Pillow's decompression-bomb limit of "
                                     f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except Image.UnidentifiedImageError as e:  # a PNG/JPEG signature, then something Pillow cannot parse
        cause = e.__context__ if e.__context__ is not None else e
        return f"the image is damaged (Pillow cannot read it: {_one_line(cause)})"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"the image is damaged ({_one_line(e)})"
    w, h = size
    if w <= 0 or h <= 0:
        return f"the image has an empty size {w}x{h}"
    return None


def _local_record(data: bytes, summary: Mapping[str, Any], store: str | os.PathLike | None) -> str | None:
    """``"matches"`` / ``"differs"``: the file's SHA-256 against the store's records of this manifest label
    (found through the watermark id in the manifest); None when the store has no such record."""
    wm = (summary.get("generation") or {}).get("watermark") or {}
    wid = wm.get("id") if isinstance(wm, dict) else None
    if not summary.get("label") or isinstance(wid, bool) or not isinstance(wid, int) or wid < 0:
        return None
    try:
        mine = [r for r in find_by_id(wid, store=store) if r.record.get("manifest_label") == summary["label"]]
    except (ProvenanceError, ValueError):  # a damaged store is reported by 'ebru provenance find', not here
        return None
    if not mine:
        return None
    return "matches" if hashlib.sha256(data).hexdigest() in {r.sha256 for r in mine} else "differs"


def verify_file(path: str | os.PathLike, *, anchors: bytes | str | os.PathLike | None = None,
                store: str | os.PathLike | None = None) -> Verdict:
    """Check the C2PA manifest of the PNG or JPEG at ``path`` against trust ``anchors``, offline.

    ``anchors``: PEM bytes or a PEM file of root certificates; default the local ``root.pem`` of
    :func:`ebru.provenance.ca.c2pa_dir` (when there is none, the best possible verdict is ``Valid``).
    Returns a :class:`Verdict` (states in the module docstring): an image that is altered or damaged
    (a flipped byte, a truncated file, a bad PNG CRC) is ``Invalid``, manifest or not; an intact one
    without a manifest, or whose manifest is only at a URL, is ``None``. Raises :class:`ProvenanceError`,
    one line, for a file that cannot be read, is not a PNG or JPEG, or exceeds Pillow's decompression-bomb
    limit.

    ``store``: the generation-record store (default :func:`ebru.provenance.record.store_dir`). When it holds
    the record of this manifest (by the watermark id and label), the file's SHA-256 must be the recorded one
    (``manifest["local_record"]`` says ``"matches"`` or ``"differs"``): this catches, on the machine that
    wrote the file, changes to manifest bytes that no signature covers, which a JPEG has no checksum for.
    """
    where = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProvenanceError(where, f"cannot read the file ({e.strerror})") from None
    fmt = sniff_format(data)
    reasons = []
    if fmt is None:
        fmt = _one_byte_off(data)
        if fmt is None:
            raise ProvenanceError(where, "not a PNG or JPEG image (ebru verifies PNG and JPEG)")
        reasons.append(f"the {fmt.upper()} signature (the first bytes) is damaged")
    damage = _check_image(data, fmt, where)
    if damage:
        reasons.append(damage)
    damaged = bool(reasons)  # altered or damaged, whatever the manifest says
    anchors_pem, anchors_name = _resolve_anchors(anchors)
    try:
        reader = _c2pa.Reader(MIME_TYPES[fmt], io.BytesIO(data), context=_context(anchors_pem))
    except _c2pa.C2paError.ManifestNotFound:
        return Verdict(where, "Invalid" if damaged else "None",
                       (*reasons, "no C2PA manifest (never signed, or stripped: 'ebru provenance find' looks the "
                                  "image up by its watermark id)"), None, anchors_name)
    except _c2pa.C2paError as e:
        msg = _one_line(e)
        if msg.startswith("Remote:"):
            return Verdict(where, "Invalid" if damaged else "None",
                           (*reasons, f"the manifest is remote, and ebru never fetches: {msg}"), None, anchors_name)
        return Verdict(where, "Invalid", (*reasons, f"the C2PA manifest cannot be read: {msg}"), None, anchors_name)
    try:
        with reader as r:
            doc = json.loads(r.json())
    except (_c2pa.C2paError, ValueError) as e:
        return Verdict(where, "Invalid", (*reasons, f"the C2PA manifest cannot be read: {_one_line(e)}"), None,
                       anchors_name)
    state, results, label, manifest = _parse_store(doc)
    active = results.get("activeManifest") or {}
    summary = _summary(manifest, label)
    signer = f"{summary['signer']['common_name']!r} ({summary['signer']['issuer']})"
    untrusted = (f"signed by {signer}, and there is no local root to check it against: run 'ebru ca init', or pass "
                 "the signer's root with --anchors" if anchors_pem is None else
                 f"signed by {signer}, which is not under the trusted root {anchors_name} "
                 "(signingCredential.untrusted)")
    for item in active.get("failure", []):
        code = item.get("code")
        reasons.append(untrusted if code == "signingCredential.untrusted"
                       else f"{code}: {item.get('explanation', '')}".rstrip(": "))
    summary["local_record"] = _local_record(data, summary, store)
    if summary["local_record"] == "differs":
        reasons.append("the file differs from the one ebru wrote and recorded under this manifest (its SHA-256 is "
                       "not the record's): bytes were changed that the signatures do not cover")
    if damaged or summary["local_record"] == "differs":
        state = "Invalid"
    elif state == "Valid" and untrusted not in reasons:
        reasons.append(untrusted)
    if state not in STATES:
        reasons.append(f"unexpected validation state {state!r}")
        state = "Invalid"
    if state != "Invalid" and summary["generation"] is None:
        reasons.append(f"not made by ebru (no {GENERATION_LABEL} assertion)")
    return Verdict(where, state, tuple(dict.fromkeys(" ".join(r.split()) for r in reasons)), summary, anchors_name)
