"""Preprocessing: Keras-style scaling, resize, the dihedral group, colour jitter (HSV, HED)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline
from configs import default
from input_pipeline import preprocessing

CONFIG = default.preprocess_config(image_size=32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def _numpy_view(image, k):
    """Independent reference: numpy rot90 then a left-right mirror."""
    out = np.rot90(image, k % 4, axes=(-3, -2))
    return np.flip(out, axis=-2) if k >= 4 else out


def test_dihedral_views_are_the_8_distinct_group_elements(images):
    views = [np.asarray(input_pipeline.dihedral_view(images, k)) for k in range(8)]
    for k, view in enumerate(views):
        np.testing.assert_array_equal(view, _numpy_view(images, k))
        np.testing.assert_array_equal(
            np.asarray(input_pipeline.inverse_dihedral_view(view, k)), images
        )
    assert len({v.tobytes() for v in views}) == 8
    # Closed under composition: any view of a view is again one of the 8 views.
    for a in range(8):
        for b in range(8):
            composed = np.asarray(input_pipeline.dihedral_view(views[a], b)).tobytes()
            assert composed in {v.tobytes() for v in views}


def test_preprocess_without_augmentation_scales_like_keras(images):
    out = jax.jit(lambda x: input_pipeline.preprocess(x, CONFIG, train=False))(images)
    assert out.dtype == jnp.float32 and out.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(out), images / 127.5 - 1.0, atol=1e-6)


def test_resize_keeps_constant_images_and_bilinear_matches_a_hand_computed_value():
    constant = np.full((2, 50, 50, 3), 200, np.uint8)
    out = input_pipeline.preprocess(constant, default.preprocess_config(image_size=96), train=False)
    assert out.shape == (2, 96, 96, 3)
    np.testing.assert_allclose(np.asarray(out), 200 / 127.5 - 1, atol=1e-5)
    # 2 -> 4 pixels, half-pixel centres: output pixel 1 sits at input 0.25 -> 0.75*a + 0.25*b.
    ramp = np.array([[0, 255]], np.uint8)[None, :, :, None].repeat(2, 1).repeat(3, -1)
    ramp = np.broadcast_to(ramp, (1, 2, 2, 3))
    out = np.asarray(
        input_pipeline.preprocess(ramp, default.preprocess_config(image_size=4), train=False)
    )
    np.testing.assert_allclose((out[0, 0, :, 0] + 1) * 127.5, [0, 63.75, 191.25, 255], atol=1e-3)


def test_training_dihedral_keeps_each_image_with_its_own_example(images):
    config = default.preprocess_config(image_size=32, dihedral=True)
    out = jax.jit(lambda x, k: input_pipeline.preprocess(x, config, train=True, rng=k))(
        images, jax.random.key(0)
    )
    out = np.rint((np.asarray(out) + 1) * 127.5).astype(np.uint8)
    seen = set()
    for i in range(len(images)):
        matches = [k for k in range(8) if np.array_equal(out[i], _numpy_view(images[i], k))]
        assert len(matches) == 1  # example i is a view of input i: labels stay paired
        seen.add(matches[0])
    many = input_pipeline.random_dihedral(
        jnp.asarray(np.repeat(images[:1], 64, 0)), jax.random.key(1)
    )
    views = {np.asarray(v).tobytes() for v in many}
    assert len(views) == 8  # all 8 group elements are drawn


def test_hsv_conversion_matches_colorsys():
    rgb = np.random.default_rng(1).random((64, 3)).astype(np.float32)
    rgb[0] = [0.5, 0.5, 0.5]  # grey: hue undefined, 0 by convention
    hsv = np.asarray(preprocessing.rgb_to_hsv(jnp.asarray(rgb)))
    expected = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, expected, atol=1e-5)
    back = np.asarray(preprocessing.hsv_to_rgb(jnp.asarray(hsv)))
    np.testing.assert_allclose(back, rgb, atol=1e-5)


def test_hed_round_trip_and_zero_jitter_is_identity():
    rgb = np.random.default_rng(2).uniform(0.05, 1.0, (2, 8, 8, 3)).astype(np.float32)
    hed = preprocessing.rgb_to_hed(jnp.asarray(rgb))
    np.testing.assert_allclose(np.asarray(preprocessing.hed_to_rgb(hed)), rgb, atol=1e-4)
    # Pure haematoxylin: 1 unit of H gives RGB = exp(-ln(1e6) ... ) along the H vector only.
    pure = np.asarray(preprocessing.hed_to_rgb(jnp.array([[0.1, 0.0, 0.0]])))
    expected = np.exp(np.log(1e-6) * 0.1 * np.array([0.65, 0.70, 0.29]))
    np.testing.assert_allclose(pure[0], expected, rtol=1e-4)
    same = preprocessing.hed_jitter(jnp.asarray(rgb), 0.0, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(same), rgb, atol=1e-4)


def test_hed_jitter_in_optical_density_shifts_stains_by_up_to_s_of_minus_ln_intensity():
    from skimage.color import hed_from_rgb, rgb_from_hed  # the stain matrices, before any scaling

    # Two pixels per image, the second with 0.2 more of each stain (in -ln I), dim enough that
    # nothing clips.
    rng = np.random.default_rng(5)
    first = rng.uniform(0.5, 0.8, (256, 1, 1, 3))
    second = first * np.exp(-np.full(3, 0.2) @ rgb_from_hed)
    rgb = np.concatenate([first, second], axis=2).astype(np.float32)
    strength = 0.05
    out = np.asarray(
        preprocessing.hed_jitter(
            jnp.asarray(rgb), strength, jax.random.key(1), bias_unit=preprocessing.OPTICAL_DENSITY
        )
    )
    assert 0 < out.min() and out.max() < 1

    def stains(image):  # -ln(I) times the stain matrix: optical density, as Tellez et al. had it
        return (-np.log(image.astype(np.float64))) @ hed_from_rgb

    before, after = stains(rgb)[:, 0], stains(out)[:, 0]  # [images, 2 pixels, 3 stains]
    alpha = (after[:, 0] - after[:, 1]) / (before[:, 0] - before[:, 1])
    beta = after[:, 0] - alpha * before[:, 0]
    tolerance = 1e-3  # float32 round trip through exp and log
    assert np.all(np.abs(alpha - 1) <= strength + tolerance)
    assert np.all(np.abs(beta) <= strength + tolerance)
    # The shifts fill U(-s, s) in optical density: on scikit-image's scale they would stay
    # under s / 13.8.
    assert np.abs(beta).max() > 0.9 * strength


def test_colour_jitter_changes_colours_but_stays_in_range(images):
    config = default.preprocess_config(image_size=32, hsv_jitter=0.1, hed_jitter=0.05)
    out = np.asarray(input_pipeline.preprocess(images, config, train=True, rng=jax.random.key(3)))
    assert np.all(out >= -1.0 - 1e-6) and np.all(out <= 1.0 + 1e-6)
    assert np.abs(out - (images / 127.5 - 1)).mean() > 0.01
    evaluation = np.asarray(input_pipeline.preprocess(images, config, train=False))
    np.testing.assert_allclose(evaluation, images / 127.5 - 1, atol=1e-6)


def test_training_augmentation_needs_a_key(images):
    with pytest.raises(ValueError, match="rng"):
        input_pipeline.preprocess(
            images, default.preprocess_config(image_size=32, dihedral=True), train=True
        )
