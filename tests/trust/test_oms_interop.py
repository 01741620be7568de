"""Interoperability with OpenSSF model signing (the ``model-signing`` package, key-based mode).

``data/oms-model-signing-1.1.1/model`` is an ebru package whose ``model.sig`` was written by
the real tool, not by ebru::

    python -m model_signing sign key model --signature model/model.sig --private_key oms-fixture.key

with model-signing 1.1.1 (from PyPI, in a separate virtual environment; it is not an ebru
dependency) and an ECDSA P-256 key made by ``ebru keys generate``, whose public half is in
``data/oms-model-signing-1.1.1/trusted``. The private key was discarded.

The other direction, ``model_signing verify key`` accepting a package signed by ``ebru sign``,
runs when ``EBRU_OMS_PYTHON`` names a Python that has ``model_signing`` installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ebru.trust import SignatureError, verify

FIXTURE = Path(__file__).parent / "data" / "oms-model-signing-1.1.1"


def test_ebru_verifies_a_bundle_written_by_model_signing(tmp_path):
    m = verify(FIXTURE / "model", trusted_keys=FIXTURE / "trusted")
    assert m.signer is not None and m.signer.name == "oms-fixture" and m.signer.algorithm == "ecdsa-p256"
    assert m.license.cls == "allow" and [t.name for t in m.weights_info.tensors] == ["w"]
    # Tampering with the OMS-signed package is caught like with ebru's own signatures.
    copy = tmp_path / "model"
    shutil.copytree(FIXTURE / "model", copy)
    (copy / "manifest.json").write_text((copy / "manifest.json").read_text().replace("fixture", "fixturf"))
    with pytest.raises(SignatureError, match=r"manifest.json differs from the signed file"):
        verify(copy, trusted_keys=FIXTURE / "trusted")


@pytest.mark.skipif(not os.environ.get("EBRU_OMS_PYTHON"), reason="set EBRU_OMS_PYTHON to a Python with model_signing")
def test_model_signing_verifies_a_bundle_written_by_ebru(make_package, keys):
    pkg = make_package(sign_key=keys.ec)
    cmd = [os.environ["EBRU_OMS_PYTHON"], "-m", "model_signing", "verify", "key", str(pkg),
           "--signature", str(pkg / "model.sig"), "--public_key", str(keys.trusted / "ec.pub")]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr
    (pkg / "config.json").write_text('{"kind": "changed"}')
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode != 0 and "Verification failed" in bad.stderr + bad.stdout
