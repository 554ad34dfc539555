"""One-layer parity tests for the adaptive poolings (kgen/codegen/lowerings/pooling.py)."""

import keras
import pytest
from helpers import assert_layer_parity, rand

from kgen.runtime.pooling import adaptive_bins

L = keras.layers


def test_adaptive_bins_overlap_and_cover():
    # 5 -> 3: sizes 2, 3, 2 with overlaps, as PyTorch and Keras's backends cut them.
    assert adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert adaptive_bins(3, 5) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("kind", ["Average", "Max"])
@pytest.mark.parametrize(
    "rank, shape, output_size",
    [
        (1, (10, 3), 4),
        (1, (7, 2), 7),
        (1, (3, 2), 5),  # more bins than steps
        (2, (7, 9, 3), (3, 4)),
        (2, (6, 5, 2), 2),
        (2, (5, 8, 2), (5, 3)),
        (3, (5, 6, 4, 2), (2, 3, 4)),
        (3, (4, 7, 3, 2), 3),
    ],
)
def test_adaptive_pooling(kind, rank, shape, output_size):
    layer = getattr(L, f"Adaptive{kind}Pooling{rank}D")(output_size)
    assert_layer_parity(layer, shape, inputs=[rand(2, *shape, seed=rank, low=-3, high=3)])
