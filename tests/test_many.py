"""register_many: a batch of pairs gives what each pair gives alone with the same seed."""
import numpy as np
import pytest

import idir_fast
from idir_fast.data import phantom_pair

KW = dict(epochs=12, batch_size=400, hidden=(32, 32), regularizer="bending", progress=False, seed=4)


@pytest.fixture(scope="module")
def three_pairs():
    return [phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=s, amplitude_mm=a)
            for s, a in ((2, 12.0), (3, 15.0), (4, 9.0))]


def test_batched_equals_one_at_a_time(three_pairs):
    items = [dict(fixed=p.fixed, moving=p.moving, mask=p.mask, fixed_landmarks=p.fixed_landmarks,
                  moving_landmarks=p.moving_landmarks) for p in three_pairs]
    many = idir_fast.register_many(items, pairs_per_batch=3, **KW)
    assert [r.run["pairs_in_batch"] for r in many] == [3, 3, 3]
    for p, r in zip(three_pairs, many):
        alone = idir_fast.register(p.fixed, p.moving, p.mask, fixed_landmarks=p.fixed_landmarks,
                                   moving_landmarks=p.moving_landmarks, **KW)
        np.testing.assert_allclose(r.history["loss"], alone.history["loss"], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(r.transform_points(p.fixed_landmarks), alone.transform_points(p.fixed_landmarks),
                                   atol=1e-3)
        assert r.metrics["tre"]["mean"] == pytest.approx(alone.metrics["tre"]["mean"], rel=1e-3)


def test_automatic_batch_and_input_errors(three_pairs):
    regs = idir_fast.register_many([(p.fixed, p.moving, p.mask) for p in three_pairs[:2]], **KW)
    assert len(regs) == 2 and regs[0].run["pairs_in_batch"] == 2
    with pytest.raises(idir_fast.InputError, match="'pairs' is empty"):
        idir_fast.register_many([], **KW)
    with pytest.raises(idir_fast.InputError, match="pairs\\[0\\].mask' is empty"):
        p = three_pairs[0]
        idir_fast.register_many([(p.fixed, p.moving, p.mask * 0)], **KW)
