"""Gaussian Shading and watermark keys, against exact answers.

- the watermarked noise is exactly N(0, 1) per entry (KS and moments over many draws), its magnitudes
  are the seeded draw's, and it does not depend on the batch;
- sample -> invert -> decode on exact oracle denoisers recovers the id with p < 1e-6;
- on fresh Gaussian noise (no watermark) nothing is detected and the decoded bits are fair coins;
- the union-bound p-value is checked by enumerating every sign pattern of a 12-chip, 2-bit scheme;
- the binomial tail against exact integer arithmetic; key files and their refusals.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ebru.diffusion import GaussianMixture, GaussianOracle, invert, sample
from ebru.diffusion.tensors import randn_like, seed_generators
from ebru.provenance import (
    ENV_WATERMARK_KEY,
    Decoded,
    GaussianShading,
    WatermarkKey,
    binomial_sf,
    default_watermark_key,
    detect_watermark,
    fit_to_shape,
    generate_watermark_key,
    load_watermark_key,
    log_binomial_sf,
    new_watermark_id,
    payload_accuracy,
    watermark_key_id,
)
from ebru.trust.errors import KeyFileError

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
SHAPE = (1, 16, 16)


def _ids(n: int, bits: int = 32, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(bits) for _ in range(n)]


def _ks_normal(x: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of the sample ``x`` from N(0, 1)."""
    x = x.flatten().double().sort().values
    n = x.numel()
    cdf = torch.special.ndtr(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


@pytest.fixture(scope="module")
def scheme():
    return GaussianShading(SECRET, SHAPE)


@pytest.fixture(scope="module")
def mixture():
    gm = GaussianMixture.random(dim=256, components=4, seed=0)
    gm.event_shape = SHAPE
    return gm


# --------------------------------------------------------------------------- the code


def test_scheme_is_pinned_for_a_known_key():
    """The keystream, permutation and code must never change: images already marked would stop decoding."""
    gs = GaussianShading(SECRET, (1, 28, 28))
    assert gs.key_id == "5568b3ff0275fac4"
    assert hashlib.sha256(gs.flip.numpy().tobytes()).hexdigest() == (
        "c8688c9d72b96e136f5d014919449e019907ea50f1368fb6ed231164dbc5a251")
    assert hashlib.sha256(gs.bit_of_chip.numpy().astype("<i8").tobytes()).hexdigest() == (
        "69e2a322228924dc860b878de3f4ae0949629623a544a3d5bda64a91bfd5e5c2")


def test_repetition_code_uses_every_chip_evenly(scheme):
    d = 256
    assert scheme.chips == d and int(scheme.copies.sum()) == d
    assert set(scheme.copies.tolist()) == {d // 32}
    odd = GaussianShading(SECRET, (1, 28, 28))  # 784 = 24 * 32 + 16
    assert sorted(set(odd.copies.tolist())) == [24, 25] and int((odd.copies == 25).sum()) == 16


def test_each_shape_has_its_own_stream():
    a, b = GaussianShading(SECRET, (1, 16, 16)), GaussianShading(SECRET, (4, 8, 8))
    assert 0.4 < float((a.flip == b.flip).double().mean()) < 0.6
    assert not torch.equal(a.bit_of_chip, b.bit_of_chip)


def test_encode_is_the_xor_of_the_repeated_bits_and_the_keystream(scheme):
    wid = 0b1011
    chips = scheme.encode(wid)[0]
    bits = torch.tensor([(wid >> i) & 1 for i in range(32)], dtype=torch.bool)
    torch.testing.assert_close(chips, bits[scheme.bit_of_chip] ^ scheme.flip, rtol=0, atol=0)
    # ids read from a store may be numpy or torch integers: the same code
    torch.testing.assert_close(scheme.encode([np.int64(wid), torch.tensor(wid)]), chips.expand(2, -1), rtol=0, atol=0)


# --------------------------------------------------------------------------- the noise


def test_noise_entries_are_exactly_standard_normal(scheme):
    seeds = list(range(400))
    z = scheme.noise(seeds, _ids(400))  # 102,400 entries
    n = z.numel()
    assert _ks_normal(z) < 1.63 / math.sqrt(n)  # KS at the 1 % level
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 4 * math.sqrt(96 / n)
    # every entry, over random ids, is positive half of the time (binomial(400, 1/2): sd 0.025)
    frac = (z > 0).double().mean(0).flatten()
    assert float((frac - 0.5).abs().max()) < 0.125
    # and within one image, whatever its id, the keystream makes the 256 entries look like N(0, 1)
    for i, wid in enumerate((0, 2**32 - 1, 12345, 0xAAAAAAAA)):
        assert _ks_normal(scheme.noise([i], wid)) < 1.95 / math.sqrt(256)  # KS at the 0.1 % level


def test_magnitudes_are_the_seeded_draw(scheme):
    seeds = [3, 1, 4]
    plain = randn_like(torch.empty(3, *SHAPE), seed_generators(seeds))
    marked = scheme.noise(seeds, [1, 2, 3])
    torch.testing.assert_close(marked.abs(), plain.abs(), rtol=0, atol=0)
    torch.testing.assert_close(marked > 0, scheme.encode([1, 2, 3]).reshape(3, *SHAPE), rtol=0, atol=0)


def test_same_seed_and_id_give_the_same_noise_whatever_the_batch(scheme):
    batch = scheme.noise([5, 6, 7], [10, 20, 30])
    alone = scheme.noise([6], [20])
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=0)
    assert not torch.equal(scheme.noise([6], [21]), alone)


def test_noise_dtype_and_device(scheme):
    z = scheme.noise([1], 7, dtype=torch.float64)
    assert z.dtype == torch.float64 and z.shape == (1, *SHAPE)


# --------------------------------------------------------------------------- round trips on exact denoisers


@pytest.mark.parametrize("steps", [10, 20])
def test_mixture_round_trip_recovers_the_id(scheme, mixture, steps):
    seeds, ids = list(range(8)), _ids(8, seed=steps)
    z = scheme.noise(seeds, ids)
    x0 = sample(mixture, (8, *SHAPE), sampler="ddim", steps=steps, seeds=seeds, noise=z)
    z_hat = invert(mixture, x0, sampler="ddim", steps=steps)
    chip_acc = float((scheme.extract(z_hat) == (z > 0).reshape(8, -1)).double().mean())
    assert chip_acc > {10: 0.96, 20: 0.98}[steps]  # measured 0.974 and 0.988
    decoded = scheme.decode(z_hat)
    assert [d.watermark_id for d in decoded] == ids
    assert all(d.detected and d.p_value < 1e-6 for d in decoded)
    assert payload_accuracy(decoded, ids) == [1.0] * 8


def test_gaussian_round_trip_and_another_sampler_for_generation(scheme):
    """Generated with DPM-Solver++(2M), detected by DDIM inversion: the sampler-mismatch case."""
    orc = GaussianOracle.random(dim=256, seed=0)
    orc.event_shape = SHAPE
    seeds, ids = [11, 12, 13, 14], _ids(4, seed=1)
    x0 = sample(orc, (4, *SHAPE), sampler="dpmpp_2m", steps=20, seeds=seeds, noise=scheme.noise(seeds, ids))
    decoded = detect_watermark(orc, x0, scheme, steps=20)
    assert [d.watermark_id for d in decoded] == ids and all(d.detected for d in decoded)


def test_detect_resizes_images_to_the_model_size(scheme, mixture):
    seeds, ids = [1, 2], _ids(2, seed=5)
    x0 = sample(mixture, (2, *SHAPE), sampler="ddim", steps=20, seeds=seeds, noise=scheme.noise(seeds, ids))
    big = F.interpolate(x0, scale_factor=3, mode="nearest")  # exported at 48x48
    torch.testing.assert_close(fit_to_shape(big, SHAPE), x0, rtol=0, atol=1e-6)  # the area average undoes it
    decoded = detect_watermark(mixture, big, scheme, steps=20)
    assert [d.watermark_id for d in decoded] == ids and all(d.detected for d in decoded)
    assert fit_to_shape(x0, SHAPE) is x0
    enlarged = fit_to_shape(torch.ones(1, 1, 8, 12), SHAPE)  # enlarging: bilinear keeps a constant image constant
    torch.testing.assert_close(enlarged, torch.ones(1, *SHAPE))


def test_wrong_key_is_not_detected(mixture):
    marked_with = GaussianShading(SECRET, SHAPE)
    seeds, ids = list(range(6)), _ids(6, seed=2)
    x0 = sample(mixture, (6, *SHAPE), sampler="ddim", steps=20, seeds=seeds, noise=marked_with.noise(seeds, ids))
    decoded = detect_watermark(mixture, x0, GaussianShading(OTHER, SHAPE), steps=20)
    assert not any(d.detected for d in decoded)
    assert all(d.p_value > 1e-3 for d in decoded)


def test_unmarked_samples_are_not_detected(scheme, mixture):
    x0 = sample(mixture, (6, *SHAPE), sampler="ddim", steps=20, seeds=list(range(6)))
    assert not any(d.detected for d in detect_watermark(mixture, x0, scheme, steps=20))


# --------------------------------------------------------------------------- the null hypothesis


def test_fresh_noise_is_never_detected_and_its_bits_are_fair(scheme):
    """2,000 noise estimates without a watermark: no detection, decoded bits are fair and uncorrelated."""
    z = torch.randn(2000, *SHAPE, generator=torch.Generator().manual_seed(0))
    decoded = scheme.decode(z)
    assert not any(d.detected for d in decoded)
    assert min(d.p_value for d in decoded) > 1e-4  # even the best of 2,000 is far from 1e-6
    bits = torch.tensor([[(d.watermark_id >> i) & 1 for i in range(32)] for d in decoded], dtype=torch.float64)
    assert float((bits.mean(0) - 0.5).abs().max()) < 4 * math.sqrt(0.25 / 2000)
    corr = torch.corrcoef(bits.T) - torch.eye(32, dtype=torch.float64)
    assert float(corr.abs().max()) < 4.5 / math.sqrt(2000)
    # against a known list of 50 ids the union bound is over 50 ids; still nothing is detected
    decoded = scheme.decode(z[:500], candidates=_ids(50, seed=9))
    assert not any(d.detected for d in decoded) and all(d.hypotheses == 50 for d in decoded)


def test_candidates_find_the_id_with_a_smaller_p_value(scheme, mixture):
    seeds, ids = [1, 2, 3], _ids(3, seed=4)
    x0 = sample(mixture, (3, *SHAPE), sampler="ddim", steps=10, seeds=seeds, noise=scheme.noise(seeds, ids))
    z_hat = invert(mixture, x0, sampler="ddim", steps=10)
    store = _ids(200, seed=8) + ids
    by_list = scheme.decode(z_hat, candidates=store)
    blind = scheme.decode(z_hat)
    assert [d.watermark_id for d in by_list] == ids
    assert all(a.log10_p_value < b.log10_p_value for a, b in zip(by_list, blind, strict=True))
    assert all(d.hypotheses == 203 for d in by_list)


# --------------------------------------------------------------------------- the p-value, exactly


def _all_sign_patterns(d: int) -> torch.Tensor:
    codes = torch.arange(2**d)
    return (((codes[:, None] >> torch.arange(d)) & 1) * 2 - 1).double()  # (2^d, d) of +-1


def test_union_bound_p_value_against_enumeration():
    """D = 12 chips, 2 bits: enumerate all 4,096 equally likely sign patterns of a null noise estimate.

    Under the null the signs are fair coins whatever the magnitudes, so every pattern is equally likely
    given the magnitudes: the reported p-value must be valid (P(p <= a) <= a for every a) for pure
    signs and for fixed unequal magnitudes, blind and over a candidate list."""
    gs = GaussianShading(SECRET, (3, 2, 2), id_bits=2)
    signs = _all_sign_patterns(12)
    mags = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 0.1
    codes = gs.encode([0, 1, 2, 3]).double() * 2 - 1  # (4, 12): +-1 code of each id
    for values in (signs, signs * mags):
        for candidates in (None, [1, 3]):
            decoded = gs.decode(values.reshape(-1, 3, 2, 2), candidates=candidates)
            ids = [0, 1, 2, 3] if candidates is None else candidates
            # the score is the best id's correlation over the norm, and the id is that best one
            corr = values @ codes[ids].T / values.norm(dim=1, keepdim=True)
            torch.testing.assert_close(torch.tensor([d.score for d in decoded], dtype=torch.float64),
                                       corr.max(1).values)
            assert all(d.hypotheses == len(ids) for d in decoded)
            p = torch.tensor([d.p_value for d in decoded])
            assert torch.equal(p, (len(ids) * torch.exp(-corr.max(1).values.clamp(min=0) ** 2 / 2)).clamp(max=1)
                               .float().double()) or torch.allclose(
                p, (len(ids) * torch.exp(-corr.max(1).values.clamp(min=0) ** 2 / 2)).clamp(max=1), rtol=1e-9)
            for t in p.unique().tolist():  # validity: P(p <= t) <= t under the null
                assert float((p <= t).double().mean()) <= t + 1e-12


def test_soft_score_beats_counting_signs_on_a_noisy_estimate(scheme):
    """A noise estimate z + e (e Gaussian, as inversion errors are): weighting chips by magnitude scores
    higher than counting agreeing signs would (its z-score), as a likelihood ratio should."""
    ids = _ids(200, seed=3)
    z = scheme.noise(list(range(200)), ids).double()
    est = z + 1.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    decoded = scheme.decode(est, candidates=ids)
    d = scheme.chips
    count_z = torch.tensor([(m.chip_matches - d / 2) / math.sqrt(d / 4) for m in decoded])
    score = torch.tensor([m.score for m in decoded])
    assert [m.watermark_id for m in decoded] == ids
    assert float(score.mean()) > 1.1 * float(count_z.mean())


@pytest.mark.parametrize("n", [1, 12, 50, 200])
def test_binomial_tail_is_exact(n):
    for k in range(-1, n + 1):
        exact = Fraction(sum(math.comb(n, j) for j in range(k + 1, n + 1)), 2**n)
        assert binomial_sf(k, n) == pytest.approx(float(exact), rel=1e-12, abs=0)
    for k in (3, n // 2, n - 1):
        if 0 <= k < n:
            exact = sum(Fraction(math.comb(n, j)) * Fraction(3, 10) ** j * Fraction(7, 10) ** (n - j)
                        for j in range(k + 1, n + 1))
            assert binomial_sf(k, n, 0.3) == pytest.approx(float(exact), rel=1e-11)


def test_binomial_tail_in_log_space_far_below_float_range():
    n, k = 12288, 11000  # a 64x64x3 image at 90 % chip accuracy: p ~ 1e-2400
    exact = sum(math.comb(n, j) for j in range(k + 1, n + 1))
    log_exact = math.log(exact) - n * math.log(2)
    assert log_binomial_sf(k, n) == pytest.approx(log_exact, rel=1e-12)
    assert binomial_sf(k, n) == 0.0 and log_binomial_sf(n, n) == -math.inf


def test_min_score_is_the_detection_threshold(scheme):
    t = GaussianShading.min_score(1e-6)  # union over 2**32 ids
    assert 2**32 * math.exp(-t * t / 2) == pytest.approx(1e-6, rel=1e-9)
    assert GaussianShading.min_score(1e-6, 1000) == pytest.approx(math.sqrt(2 * math.log(1e9)), rel=1e-12)
    code = scheme.encode(77).double().flatten() * 2 - 1  # +-1: a perfect estimate of the chips
    for target in (t * 1.001, t * 0.999):
        # the +-1 code diluted by a component that sums to 0 within every bit's chips (after the keystream's
        # flips), so it moves no bit's soft sum and is orthogonal to the code: score = sqrt(D) * cos
        ortho = torch.zeros(256, dtype=torch.float64)
        for b in range(32):
            chips = (scheme.bit_of_chip == b).nonzero().flatten()
            ortho[chips] = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(len(chips) // 2)
        ortho = torch.where(scheme.flip, -ortho, ortho)
        assert abs(float(ortho @ code)) < 1e-12
        cos = target / math.sqrt(256)
        est = code / code.norm() * cos + ortho / ortho.norm() * math.sqrt(1 - cos * cos)
        d = scheme.decode(est.reshape(1, *SHAPE))[0]
        assert d.watermark_id == 77 and d.score == pytest.approx(target, rel=1e-9)
        assert d.detected == (target > t)
        assert d.chip_accuracy == d.chip_matches / 256


# --------------------------------------------------------------------------- small pieces


def test_payload_accuracy_counts_the_right_bits():
    def dec(wid):
        return Decoded(wid, False, 1.0, 0.0, 0.0, 0.5, 0, 8, 8, 256, 1e-6, "k")

    assert payload_accuracy([dec(0b1111_0000), dec(0)], [0b1111_0000, 0b1000_0001]) == [1.0, 0.75]
    with pytest.raises(ValueError, match=r"2 decoded results for 1 true ids"):
        payload_accuracy([dec(0), dec(1)], [0])


def test_new_watermark_ids_are_random_and_in_range():
    ids = {new_watermark_id() for _ in range(50)}
    assert len(ids) == 50 and all(0 <= i < 2**32 for i in ids)
    assert all(0 <= new_watermark_id(8) < 256 for _ in range(20))


def test_decoded_is_json_ready(scheme):
    d = scheme.decode(torch.randn(1, *SHAPE))[0]
    assert json.loads(json.dumps(d.to_dict()))["key_id"] == scheme.key_id


@pytest.mark.parametrize(("call", "message"), [
    (lambda gs: gs.decode(torch.zeros(2, 1, 28, 28)), r"per-sample shape \(1, 28, 28\).*for shape \(1, 16, 16\)"),
    (lambda gs: gs.decode(torch.zeros(256)), r"per-sample shape"),
    (lambda gs: gs.noise([1, 2], [1]), r"1 watermark ids for 2 seeds"),
    (lambda gs: gs.noise([1], [2**32]), r"integers in \[0, 2\*\*32\)"),
    (lambda gs: gs.noise([1], [1.0]), r"integers in \[0, 2\*\*32\), got 1.0"),
    (lambda gs: gs.noise([1.5], [1]), r"seeds must be integers"),
    (lambda gs: gs.decode(torch.zeros(1, *SHAPE), candidates=[]), r"candidates is empty"),
    (lambda gs: gs.decode(torch.zeros(1, *SHAPE), fpr=0), r"fpr must be > 0"),
    (lambda gs: detect_watermark(None, torch.zeros(1, 3, 16, 16), gs), r"3 channels.*makes 1"),
    (lambda gs: fit_to_shape(torch.zeros(16, 16), gs.shape), r"\(B, C, H, W\)"),
])
def test_bad_input_raises_one_clear_error(scheme, call, message):
    with pytest.raises(ValueError, match=message):
        call(scheme)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"key": b"short"}, r"32 bytes"),
    ({"key": "a string"}, r"WatermarkKey or its 32-byte secret"),
    ({"shape": (0, 4)}, r"shape entry must be a positive integer"),
    ({"shape": ()}, r"at least one dimension"),
    ({"id_bits": 0}, r"id_bits must be a positive integer"),
    ({"id_bits": 64}, r"at most 63"),
    ({"shape": (2, 2), "id_bits": 5}, r"cannot exceed the 4 noise entries"),
])
def test_bad_scheme_arguments(kwargs, message):
    args = {"key": SECRET, "shape": SHAPE} | kwargs
    with pytest.raises(ValueError, match=message):
        GaussianShading(args.pop("key"), args.pop("shape"), **args)


# --------------------------------------------------------------------------- keys


def test_generated_key_file_round_trips(tmp_path):
    path = generate_watermark_key(tmp_path, "studio")
    assert path == tmp_path / "studio.wmkey"
    assert os.stat(path).st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "ebru-watermark-key" and doc["name"] == "studio" and doc["created"].endswith("Z")
    key = load_watermark_key(path)
    assert key.secret == __import__("base64").b64decode(doc["secret"]) and len(key.secret) == 32
    assert key.key_id == doc["key_id"] == watermark_key_id(key.secret)
    assert len(key.key_id) == 16 and key.key_id != hashlib.sha256(key.secret).hexdigest()[:16]  # domain-separated
    assert doc["secret"] not in repr(key) and "secret" not in repr(key)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_watermark_key(tmp_path, "studio")
    assert load_watermark_key(generate_watermark_key(tmp_path, "other")).secret != key.secret


def _write(path, doc, mode=0o600):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: "{not json", r"not JSON"),
    (lambda d: {**d, "format": "other"}, r"not a watermark key file"),
    (lambda d: {**d, "version": 9}, r"format version 9"),
    (lambda d: {k: v for k, v in d.items() if k != "secret"}, r"no \"secret\""),
    (lambda d: {**d, "secret": "###"}, r"not valid base64"),
    (lambda d: {**d, "secret": "AAAA"}, r"3 bytes, expected 32"),
    (lambda d: {**d, "key_id": "0" * 16}, r"key_id does not match"),
])
def test_corrupt_key_files_are_refused(tmp_path, edit, message):
    doc = json.loads(generate_watermark_key(tmp_path, "k").read_text(encoding="utf-8"))
    bad = _write(tmp_path / "bad.wmkey", edit(doc))
    with pytest.raises(KeyFileError, match=message) as e:
        load_watermark_key(bad)
    assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)


def test_missing_open_and_odd_key_files_are_refused(tmp_path):
    with pytest.raises(KeyFileError, match=r"watermark key not found.*ebru keys generate --watermark"):
        load_watermark_key(tmp_path / "none.wmkey")
    path = generate_watermark_key(tmp_path, "k")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"accessible by other users \(mode 0644\).*chmod 600"):
        load_watermark_key(path)
    with pytest.raises(KeyFileError, match=r"is a directory"):
        load_watermark_key(tmp_path)
    os.chmod(path, 0o600)
    (tmp_path / "link.wmkey").symlink_to(path)
    with pytest.raises(KeyFileError, match=r"symbolic link"):
        load_watermark_key(tmp_path / "link.wmkey")
    with pytest.raises(ValueError, match=r"key name"):
        generate_watermark_key(tmp_path, "../escape")


def test_default_key_is_created_once_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_WATERMARK_KEY, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(KeyFileError, match=r"no watermark key yet"):
        default_watermark_key(create=False)
    first = default_watermark_key()
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "created a watermark key" in note and first.key_id in note
    path = tmp_path / "config" / "ebru" / "watermark" / "default.wmkey"
    assert first.path == path and os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    again = default_watermark_key()
    assert again.secret == first.secret and capsys.readouterr().err == ""


def test_env_key_must_exist_and_is_never_created(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_WATERMARK_KEY, str(tmp_path / "typo.wmkey"))
    with pytest.raises(KeyFileError, match=r"typo.wmkey: watermark key not found"):
        default_watermark_key()
    assert not (tmp_path / "typo.wmkey").exists()
    path = generate_watermark_key(tmp_path, "team")
    monkeypatch.setenv(ENV_WATERMARK_KEY, str(path))
    assert default_watermark_key().key_id == load_watermark_key(path).key_id


def test_watermark_key_object_checks_its_secret():
    key = WatermarkKey.from_secret(SECRET, "t")
    assert key.key_id == watermark_key_id(SECRET) and GaussianShading(key, SHAPE).key_id == key.key_id
    with pytest.raises(ValueError, match=r"32 bytes"):
        WatermarkKey.from_secret(b"x" * 31)
    with pytest.raises(ValueError, match=r"does not match the secret"):
        WatermarkKey(name="t", secret=SECRET, key_id="0" * 16)
