"""Generated sample images with ground truth: a chest X-ray and an abdominal CT phantom.

Deterministic for a seed, offline, fast (well under a second each at the default
size). Anatomy is drawn in coordinates normalised to the array, so small shapes (for
tests) hold the same structures; the seed moves and resizes organs a little so that
several seeds make a small training set. Orientation follows radiological display:
the patient's right is on the image's left (array column 0), anterior at the top.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_lightm.io.geometry import Geometry

XRAY_CLASSES = ["background", "right lung", "left lung", "heart"]
CT_CLASSES = ["background", "liver", "spine"]

# CT intensities, HU (portal-venous phase: enhanced liver and vessels)
AIR, FAT, MUSCLE, LIVER, VESSEL, BONE, MARROW, DISC = -1000, -100, 45, 105, 190, 700, 250, 80


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Normalised coordinates in [-1, 1] per axis (pixel centres), broadcastable."""
    return list(
        np.meshgrid(
            *[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True
        )
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std, spatially correlated noise (soft texture)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _wobble(rng: np.random.Generator, grid: list[np.ndarray], waves: int = 4) -> np.ndarray:
    """A smooth random deformation field, about unit amplitude: a few low-frequency plane
    waves (cheap on a sparse grid, unlike filtering a full noise volume)."""
    out = np.float32(0)
    for _ in range(waves):
        freq = rng.uniform(0.5, 2.5, size=len(grid)) * rng.choice([-1, 1], size=len(grid))
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(np.float32(f * np.pi) * g for f, g in zip(freq, grid))
        out = out + np.sin(arg + np.float32(phase)) * np.float32(np.sqrt(2 / waves))
    return out


# --- chest X-ray --------------------------------------------------------------------------


def xray_phantom(seed: int = 0, size: int = 512) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A frontal (PA) chest X-ray phantom.

    Args:
        seed: varies lung size, heart position and rib phase a little.
        size: image side in pixels (the field of view stays 360 mm).

    Returns:
        ``image`` float32 ``[size, size]`` in [0, 1] (air dark, bone bright),
        ``labels`` uint8 ``[size, size]`` indexing :data:`XRAY_CLASSES` (right lung on
        the image's left; lungs exclude the heart, as in the JSRT/SCR masks),
        ``geometry`` (spacing 360 mm / size, modality ``"XR"``).
    """
    if size < 32:
        raise ValueError(f"xray_phantom needs size >= 32, got {size}")
    rng = np.random.default_rng(seed)
    y, x = _grid((size, size))
    jitter = rng.uniform(-1, 1, size=6).astype(np.float32)

    thorax = ((x / 0.82) ** 2 + ((y - 0.05) / 1.05) ** 2) < 1
    # lungs: rounded shapes with a domed diaphragm (lower edge), right one larger
    lung_h = 0.62 + 0.04 * jitter[0]
    wobble = 0.04 * _wobble(rng, [y, x])
    right = (((x + 0.36) / 0.27) ** 2 + ((y + 0.02) / lung_h) ** 4 + wobble < 1) & (
        y < 0.50 - 0.35 * (x + 0.36) ** 2 / 0.07
    )
    left = (((x - 0.37) / 0.25) ** 2 + ((y + 0.05) / (lung_h - 0.03)) ** 4 + wobble < 1) & (
        y < 0.45 - 0.35 * (x - 0.37) ** 2 / 0.06
    )
    heart_cx, heart_cy = 0.12 + 0.03 * jitter[1], 0.28 + 0.03 * jitter[2]
    heart = (((x - heart_cx) / 0.31) ** 2 + ((y - heart_cy) / 0.24) ** 2) < 1
    spine = (np.abs(x) < 0.07) & thorax

    image = np.where(thorax, 0.62, 0.08).astype(np.float32)
    image = np.where(spine, 0.78, image)
    image = np.where(right | left, 0.30, image)
    image = np.where(heart, 0.74, image)
    image += _ribs(x, y, rng, jitter[3]) * (thorax & ~spine)
    image += _clavicles(x, y)
    image = ndimage.gaussian_filter(image, size / 400)
    image += 0.04 * _smooth_noise(rng, (size, size), size / 80) * thorax  # tissue mottle
    image += 0.02 * rng.standard_normal((size, size)).astype(np.float32)  # quantum noise
    image = np.clip(image, 0, 1).astype(np.float32)

    labels = np.zeros((size, size), np.uint8)
    labels[right & ~heart] = 1
    labels[left & ~heart] = 2
    labels[heart & thorax] = 3
    spacing = 360.0 / size
    geometry = Geometry(
        (spacing, spacing), modality="XR", extra={"phantom": "xray", "seed": int(seed)}
    )
    return image, labels, geometry


def _ribs(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, phase: float) -> np.ndarray:
    """Posterior rib arcs, ten per side, as a brightness increment."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    side = np.abs(x)
    for k in range(10):
        top = -0.62 + 0.115 * k + 0.02 * phase
        centre = top + 0.55 * (side - 0.08) ** 2 - 0.05 * side  # arcs bend down laterally
        width = 0.022 + 0.002 * k
        out += 0.16 * np.exp(-(((y - centre) / width) ** 2)) * (side > 0.08) * (side < 0.8)
    return out


def _clavicles(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    centre = -0.72 + 0.12 * np.abs(x)
    return (0.14 * np.exp(-(((y - centre) / 0.03) ** 2)) * (np.abs(x) < 0.6)).astype(np.float32)


# --- abdominal CT -------------------------------------------------------------------------


def ct_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 160, 160),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """An axial abdominal CT phantom in HU.

    Args:
        seed: varies body size, liver position/shape and vessel paths a little.
        shape: ``(Z, Y, X)`` voxels; each axis at least 8.
        spacing: array-order voxel size in mm (anisotropic like clinical CT).

    Returns:
        ``image`` float32 ``[Z, Y, X]`` in HU (air -1000, fat, muscle, enhanced liver
        with brighter vessels, aorta, spine with marrow and discs), ``labels`` uint8
        indexing :data:`CT_CLASSES` (liver includes its vessels and is one connected
        component; spine is the vertebral bone, discs excluded), ``geometry``
        (modality ``"CT"``, intensity unit ``"HU"``, identity direction, centred origin).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"ct_phantom needs a 3D shape with each axis >= 8, got {shape}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = _grid(shape)
    j = rng.uniform(-1, 1, size=8).astype(np.float32)

    # body: ellipse (wider than deep) that grows a little towards the bottom slices
    ax_, ay_ = 0.86 + 0.04 * j[0] + 0.03 * z, 0.66 + 0.04 * j[1] + 0.02 * z
    body_r = (x / ax_) ** 2 + ((y - 0.05) / ay_) ** 2
    body = body_r < 1
    muscle_core = body_r < 0.78  # inside the subcutaneous fat ring

    # liver: patient's right (image left), anterior-lateral, tapering towards the feet
    wob = 0.15 * _wobble(rng, [z, y, x])
    lx, ly = -0.36 + 0.05 * j[2], -0.08 + 0.05 * j[3]
    taper = 1 - 0.4 * (1 - z) / 2  # LPS: z grows towards the head, the liver tip is low
    liver_f = (
        ((x - lx) / (0.46 * taper)) ** 2
        + ((y - ly) / (0.42 * taper)) ** 2
        + ((z + 0.1 * j[4]) / 0.85) ** 2
        + wob
    )
    liver = _largest_component((liver_f < 1) & muscle_core)
    vessels = _vessels(shape, (lx, ly), rng) & liver

    # spine: vertebral body + posterior arch at the back (large y), discs every ~25 mm
    sy = 0.42 + 0.03 * j[5]
    vertebra = ((x / 0.13) ** 2 + ((y - sy) / 0.11) ** 2 < 1) | (
        (np.abs(x) < 0.035) & (y > sy) & (y < sy + 0.26)
    )
    vertebra = np.broadcast_to(vertebra, shape)
    period = max(2, int(round(25.0 / spacing[0])))
    disc_slices = (np.arange(nz) % period) < max(1, int(round(4.0 / spacing[0])))
    disc = vertebra & disc_slices[:, None, None]
    bone = vertebra & ~disc
    cortex = bone & ~ndimage.binary_erosion(bone, iterations=max(1, nx // 80))
    aorta = np.broadcast_to(((x - 0.05) / 0.07) ** 2 + ((y - sy + 0.2) / 0.07) ** 2 < 1, shape)

    image = np.full(shape, AIR, np.float32)
    image[body] = FAT
    image[muscle_core] = MUSCLE
    image[aorta & muscle_core] = VESSEL
    image[liver] = LIVER
    image[vessels] = VESSEL
    image[disc] = DISC
    image[bone] = MARROW
    image[cortex] = BONE
    image += 12.0 * _smooth_noise(rng, shape, 1.5) * body  # organ texture
    image = ndimage.gaussian_filter(image, 0.6)
    image += 10.0 * rng.standard_normal(shape).astype(np.float32)  # quantum noise

    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[bone] = 2
    origin = tuple(-0.5 * n * s for n, s in zip((nx, ny, nz), spacing[::-1]))
    geometry = Geometry(
        spacing[::-1],
        origin,
        modality="CT",
        intensity_unit="HU",
        extra={"phantom": "ct", "seed": int(seed)},
    )
    return image.astype(np.float32), labels, geometry


def _vessels(
    shape: tuple[int, int, int], centre: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A few tubes running through the liver (portal / hepatic vein branches)."""
    z, y, x = _grid(shape)
    out = np.zeros(shape, bool)
    for _ in range(3):
        ox, oy = centre[0] + rng.uniform(-0.12, 0.12), centre[1] + rng.uniform(-0.12, 0.12)
        dx, dy = rng.uniform(-0.25, 0.25, size=2)
        radius = rng.uniform(0.035, 0.06)
        # each tube drifts linearly in (x, y) along z
        out |= ((x - ox - dx * z) ** 2 + (y - oy - dy * z) ** 2) < radius**2
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (the liver must be one piece)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


__all__ = ["CT_CLASSES", "XRAY_CLASSES", "ct_phantom", "xray_phantom"]
