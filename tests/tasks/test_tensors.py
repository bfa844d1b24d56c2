"""tasks.tensors: the one conversion between uint8 images and model tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.tensors import tensor_to_uint8, uint8_to_tensor


def test_round_trip_is_exact_for_every_value():
    images = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    x = uint8_to_tensor(images)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 16, 16)
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(tensor_to_uint8(x), images)


def test_out_of_range_values_clip_and_gradients_are_ignored():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    x = x.clone().requires_grad_(True)
    out = tensor_to_uint8(x)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_wrong_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_tensor(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_tensor(np.zeros((4, 4, 3), np.uint8))
