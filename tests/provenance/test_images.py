"""Reading a handed-in image for watermark detection: exact pixels, the model's channel layout, a writable array.

``ebru watermark detect`` turns the array into a tensor with ``torch.from_numpy``; Pillow's buffer is read-only,
and torch warns ("The given NumPy array is not writable") on every such array, so the reader returns a copy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ebru.provenance.images import image_array


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_image_array_is_a_writable_exact_copy_that_torch_takes_without_a_warning(tmp_path, channels, mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode).save(path)
    arr = image_array(path, channels)
    assert arr.dtype == np.uint8 and arr.shape == (5, 7, channels)
    assert np.array_equal(arr, pixels)
    assert arr.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(torch.from_numpy(arr), torch.from_numpy(pixels))
