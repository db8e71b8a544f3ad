"""Preprocessing and augmentation on the accelerator (pure jax.numpy, called inside jit).

The host ships uint8 50x50 patches (4x fewer bytes than float32); everything else runs on the
device, so augmentation never starves it. Order of operations, at 50x50 before resizing (cheaper):
1. uint8 -> float in [0, 1];
2. training only: a random dihedral view per image (the 8 flips x 90-degree rotations: a tissue
   patch has no canonical orientation), then colour/stain jitter in HSV and in HED space
   (Tellez et al., "Quantifying the effects of data augmentation and stain color normalization in
   convolutional neural networks for computational pathology", MedIA 2019);
3. resize to `image_size` (the paper resized its 50x50 patches; `jax.image.resize`, bilinear by
   default, antialiased when shrinking);
4. scale to [-1, 1] as Keras' MobileNet `preprocess_input` does (x / 127.5 - 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Ruifrok & Johnston (2001) stain matrix, rows H, E, D (DAB) in RGB optical density, as in
# scikit-image's `rgb_from_hed`; its inverse separates the stains.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
_OD_FLOOR = 1e-6  # smallest intensity, avoids log(0) on black pixels


def dihedral_view(images: jax.Array, k: int) -> jax.Array:
    """View k (static, 0..7) of the dihedral group D4 on [..., H, W, C] square images.

    k % 4 quarter turns counter-clockwise, then a left-right mirror when k >= 4.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral view index must be in 0..7, got {k}")
    out = jnp.rot90(images, k=k % 4, axes=(-3, -2))
    return jnp.flip(out, axis=-2) if k >= 4 else out


def inverse_dihedral_view(images: jax.Array, k: int) -> jax.Array:
    """Undoes `dihedral_view(., k)`: mirror back first, then turn back."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral view index must be in 0..7, got {k}")
    out = jnp.flip(images, axis=-2) if k >= 4 else images
    return jnp.rot90(out, k=-(k % 4), axes=(-3, -2))


def random_dihedral(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Each image [B, S, S, C] in one of its 8 dihedral views, drawn uniformly per image.

    Three independent coin flips (transpose, flip rows, flip columns) reach each group element
    exactly once, with selects instead of gathers.
    """
    transpose, flip_rows, flip_cols = jax.random.bernoulli(rng, 0.5, (3, images.shape[0], 1, 1, 1))
    images = jnp.where(transpose, jnp.swapaxes(images, 1, 2), images)
    images = jnp.where(flip_rows, images[:, ::-1], images)
    return jnp.where(flip_cols, images[:, :, ::-1], images)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn), like `colorsys`."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maximum = jnp.max(rgb, axis=-1)
    minimum = jnp.min(rgb, axis=-1)
    delta = maximum - minimum
    safe_delta = jnp.where(delta > 0, delta, 1.0)
    hue = jnp.where(
        maximum == r,
        (g - b) / safe_delta,
        jnp.where(maximum == g, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta),
    )
    hue = jnp.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    saturation = jnp.where(maximum > 0, delta / jnp.where(maximum > 0, maximum, 1.0), 0.0)
    return jnp.stack([hue, saturation, maximum], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = jnp.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    sector = sector.astype(jnp.int32) % 6
    choices_r = jnp.stack([value, q, p, p, t, value], axis=-1)
    choices_g = jnp.stack([t, value, value, q, p, p], axis=-1)
    choices_b = jnp.stack([p, p, t, value, value, q], axis=-1)
    pick = jax.nn.one_hot(sector, 6, dtype=hsv.dtype)
    return jnp.stack(
        [(choices_r * pick).sum(-1), (choices_g * pick).sum(-1), (choices_b * pick).sum(-1)],
        axis=-1,
    )


def rgb_to_hed(rgb: jax.Array) -> jax.Array:
    """Colour deconvolution (Ruifrok & Johnston 2001), as scikit-image's `rgb2hed`.

    Unlike scikit-image, negative concentrations (colours outside the stains' cone) are kept, so
    that `hed_to_rgb` inverts it exactly and a zero jitter is the identity.
    """
    log_floor = np.log(_OD_FLOOR)
    optical_density = jnp.log(jnp.maximum(rgb, _OD_FLOOR)) / log_floor
    return optical_density @ HED_FROM_RGB


def hed_to_rgb(hed: jax.Array) -> jax.Array:
    """Inverse of `rgb_to_hed`, as scikit-image's `hed2rgb`."""
    log_floor = np.log(_OD_FLOOR)
    return jnp.clip(jnp.exp((hed * log_floor) @ RGB_FROM_HED), 0.0, 1.0)


def hsv_jitter(images: jax.Array, strength: float, rng: jax.Array) -> jax.Array:
    """Per image: hue shifted by U(-s, s) of a turn, saturation and value scaled by U(1-s, 1+s)."""
    batch = images.shape[0]
    hue_key, sat_key, val_key = jax.random.split(rng, 3)
    shape = (batch, 1, 1)
    hsv = rgb_to_hsv(images)
    hue = (hsv[..., 0] + jax.random.uniform(hue_key, shape, minval=-strength, maxval=strength)) % 1
    scale_s = jax.random.uniform(sat_key, shape, minval=1 - strength, maxval=1 + strength)
    scale_v = jax.random.uniform(val_key, shape, minval=1 - strength, maxval=1 + strength)
    hsv = jnp.stack(
        [hue, jnp.clip(hsv[..., 1] * scale_s, 0, 1), jnp.clip(hsv[..., 2] * scale_v, 0, 1)], -1
    )
    return hsv_to_rgb(hsv)


def hed_jitter(
    images: jax.Array, strength: float, rng: jax.Array, bias_unit: float = 1.0
) -> jax.Array:
    """Stain jitter (Tellez et al. 2019): each of H, E, D as alpha * c + beta per image,
    alpha ~ U(1 - s, 1 + s) and beta ~ U(-s, s) * `bias_unit` on `rgb_to_hed`'s scale.

    `bias_unit` = `OPTICAL_DENSITY` reads the bias in optical density (see there).
    """
    batch = images.shape[0]
    alpha_key, beta_key = jax.random.split(rng)
    shape = (batch, 1, 1, 3)
    alpha = jax.random.uniform(alpha_key, shape, minval=1 - strength, maxval=1 + strength)
    beta = bias_unit * jax.random.uniform(beta_key, shape, minval=-strength, maxval=strength)
    return hed_to_rgb(rgb_to_hed(images) * alpha + beta)


# One unit of optical density, -ln(I / I0), on `rgb_to_hed`'s scale. scikit-image divides the
# optical density by ln(1e6) = 13.8 since 0.18 (its PR #4725); Tellez et al.'s code used the
# earlier `rgb2hed`, -ln(I) times the stain matrix, so their strengths (0.05 "light" ... 0.2
# "strong") are in this unit. Decadic optical density is this divided by ln(10).
OPTICAL_DENSITY = float(-1.0 / np.log(_OD_FLOOR))


def resize(images: jax.Array, image_size: int, method: str = "bilinear") -> jax.Array:
    """Resizes [B, H, W, C] to [B, S, S, C] with `jax.image.resize` (antialiased when shrinking)."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    shape = (images.shape[0], image_size, image_size, images.shape[-1])
    return jax.image.resize(images, shape, method=method, antialias=True)


def preprocess(
    images: jax.Array,
    config: ml_collections.ConfigDict,
    train: bool,
    rng: jax.Array | None = None,
) -> jax.Array:
    """uint8 [B, H, W, 3] patches -> float32 [B, S, S, 3] network inputs in [-1, 1].

    `config` holds image_size, resize_method, dihedral, hsv_jitter, hed_jitter, hed_jitter_od
    (config.preprocess). Augmentation runs only when train=True and then needs `rng`.
    """
    image_size, method = config.image_size, config.resize_method
    use_dihedral, hsv_strength, hed_strength = config.dihedral, config.hsv_jitter, config.hed_jitter
    # Configs written before the key existed have no stain jitter in optical density.
    hed_od_strength = config.get("hed_jitter_od", 0.0)
    if hed_strength > 0 and hed_od_strength > 0:
        raise ValueError("set one of preprocess.hed_jitter and preprocess.hed_jitter_od")
    x = images.astype(jnp.float32) / 255.0
    if train and (use_dihedral or hsv_strength > 0 or hed_strength > 0 or hed_od_strength > 0):
        if rng is None:
            raise ValueError("training-time augmentation needs an rng key")
        dihedral_key, hsv_key, hed_key = jax.random.split(rng, 3)
        if use_dihedral:
            x = random_dihedral(x, dihedral_key)
        if hsv_strength > 0:
            x = hsv_jitter(x, hsv_strength, hsv_key)
        if hed_strength > 0:
            x = hed_jitter(x, hed_strength, hed_key)
        if hed_od_strength > 0:
            x = hed_jitter(x, hed_od_strength, hed_key, bias_unit=OPTICAL_DENSITY)
    x = resize(x, image_size, method)
    return x * 2.0 - 1.0  # = uint8 / 127.5 - 1, as Keras' MobileNet preprocess_input
