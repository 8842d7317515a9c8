"""Generated sample images with ground truth: a chest X-ray and an abdominal CT phantom.

Deterministic for a seed, offline, fast (about a second each at the default
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
    """A frontal (PA) chest X-ray phantom that looks like a film.

    The image is made like a radiograph: an attenuation sum along each ray (soft tissue
    thickest mid-chest and falling off to the sides, air in the lung fields, mediastinum,
    heart, bones) exposed into brightness (``1 - exp(-attenuation)``: bone and soft tissue
    bright, air dark). It shows the neck and shoulders with dark air beside them, the
    humeral heads and clavicles, curved posterior and fainter anterior ribs, the spine
    through the mediastinum, the aortic knob, the heart silhouette over the left lung's
    medial border, domed hemidiaphragms (the right one higher) over a bright abdomen, and
    vessels fanning out of each hilum. Proportions follow adult PA films at a 360 mm
    field of view, so models trained on real films (the shipped ``cxr-lungs``) segment it.

    Args:
        seed: varies lung and dome heights, heart size and position, rib phase, vessels.
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
    y, x = (np.broadcast_to(a, (size, size)) for a in _grid((size, size)))
    j = rng.uniform(-1, 1, size=8).astype(np.float32)
    ax = np.abs(x)

    # body: neck widening into the shoulders, then the chest wall; air beside it
    half_width = np.where(
        y < -0.78,
        0.30 + 0.62 * np.clip((y + 1.0) / 0.22, 0, 1) ** 2,
        0.92 + 0.03 * j[0] - 0.04 * np.clip(y - 0.2, 0, None),
    ).astype(np.float32)
    body_r = ax / half_width
    body = body_r < 1
    depth = np.sqrt(np.clip(1 - body_r**2, 0, 1))  # soft-tissue thickness across the chest

    # lung fields (signed functions, < 0 inside): apex under the clavicle, wide base,
    # hemidiaphragm domes (the right one higher), the left one cut by the aortic knob
    wobble = 0.025 * _wobble(rng, [y, x])
    top = -0.86 + 0.03 * j[1]
    grow = np.clip((y - top) / 0.95, 0, 1) ** 0.45
    knob = ((x - 0.17) / 0.08) ** 2 + ((y + 0.28) / 0.07) ** 2 - 1
    fields = []
    for sign in (-1, 1):  # patient's right (image left), then left
        s = sign * x  # distance from the midline towards this side
        lateral = 0.20 + 0.57 * grow
        medial = 0.10 + 0.13 * np.clip((y - top) / 1.3, 0, 1)
        apex = top + 2.0 * (s - 0.30) ** 2
        if sign < 0:
            dome = (
                0.37
                + 0.03 * j[3]
                + 1.3 * np.clip(s - 0.40, 0, None) ** 2
                + 1.5 * np.clip(0.40 - s, 0, None) ** 2
            )
        else:
            dome = (
                0.44
                + 0.03 * j[4]
                + 1.3 * np.clip(s - 0.36, 0, None) ** 2
                + 0.3 * np.clip(0.36 - s - 0.05, 0, None) ** 2
            )
        f = _soft_max([s - lateral, medial - s, apex - y, y - dome], 0.02) + wobble
        if sign > 0:
            f = np.maximum(f, -0.05 * knob)
        fields.append(f)
    right_f, left_f = fields

    # heart: the cardiac silhouette, narrow under the mediastinum, widest low down,
    # standing on the diaphragm, its apex towards the patient's left
    htop, hbot = -0.10 + 0.03 * j[6], 0.56 + 0.03 * j[6]
    t = (y - htop) / (hbot - htop)
    centre = 0.07 + 0.15 * np.clip(t, 0, 1) ** 1.5 + 0.02 * j[5]
    taper = np.where(t < 0.6, (t - 0.6) / 0.62, (t - 0.6) / 0.42)
    half = 0.335 * (1 + 0.06 * j[5]) * np.sqrt(np.clip(1 - taper**2, 0, 1))
    heart_f = np.maximum(np.abs(x - centre) - half, np.maximum(htop - y, y - hbot)) / 0.1
    heart = heart_f < 0

    # attenuation along each ray
    att = 1.6 * depth * body
    heart_soft = _soft(heart_f, 0.05)
    lung_air = _soft(right_f, 0.03) + _soft(left_f, 0.03)
    att -= 0.9 * lung_air * (1 - 0.9 * heart_soft) * (0.6 + 0.4 * depth)
    mediastinum = np.clip(1 - ax / (0.13 + 0.05 * np.clip(-y, 0, None)), 0, 1) ** 0.5 * body
    att += 0.35 * mediastinum * (y > -0.95)
    att += 0.10 * heart_soft * (y < 0.52)  # below, the heart's edge merges with the dome
    att += 0.08 * _soft(knob, 0.3)
    att += _xray_bones(x, y, j, half_width) * body
    att += 0.12 * _hilar_vessels(x, y, rng) * lung_air
    att += 0.05 * _smooth_noise(rng, (size, size), size / 80) * body  # tissue mottle
    att = ndimage.gaussian_filter(att.astype(np.float32), size / 500)

    # exposure: brightness saturates towards bone, as on a film
    image = 1 - np.exp(-np.clip(att, 0, None))
    image = image / max(float(np.percentile(image, 99.9)), 1e-6)
    image += 0.015 * rng.standard_normal((size, size)).astype(np.float32)  # quantum noise
    image = np.clip(image, 0, 1).astype(np.float32)

    labels = np.zeros((size, size), np.uint8)
    labels[(right_f < 0) & ~heart] = 1
    labels[(left_f < 0) & ~heart] = 2
    labels[heart] = 3
    spacing = 360.0 / size
    geometry = Geometry(
        (spacing, spacing), modality="XR", extra={"phantom": "xray", "seed": int(seed)}
    )
    return image, labels, geometry


def _soft(f: np.ndarray, edge: float) -> np.ndarray:
    """Membership in ``f < 0`` from 0 to 1, ramping over ``edge`` (in units of ``f``)."""
    return np.clip(0.5 - f / edge, 0, 1)


def _soft_max(parts: list[np.ndarray], k: float) -> np.ndarray:
    """The maximum of ``parts`` with its corners rounded over about ``k``."""
    m = np.max(parts, axis=0)
    return m + k * np.log(np.exp((np.stack(parts) - m) / k).sum(0))


def _band(dist: np.ndarray, half_width: float) -> np.ndarray:
    """A bone seen edge-on across ``dist = 0``: denser cortex at both edges."""
    t = np.abs(dist) / half_width
    return np.where(t < 1, 0.75 + 0.25 * t**4, 0).astype(np.float32)


def _xray_bones(
    x: np.ndarray, y: np.ndarray, j: np.ndarray, half_width: np.ndarray
) -> np.ndarray:
    """Attenuation of the spine, ribs, clavicles, humeral heads and scapular edges."""
    ax = np.abs(x)
    bone = np.zeros(x.shape, np.float32)
    # vertebral bodies with disc spaces, faint behind the mediastinum
    vert = (ax < 0.075) * (0.6 + 0.4 * (np.cos(np.pi * (y - 0.02 * j[7]) / 0.055) ** 2 > 0.25))
    bone += 0.12 * vert
    sx = np.clip(ax - 0.08, 0, None)
    for k in range(10):
        # posterior ribs: from the spine slightly up, then curving down along the side
        y0 = -0.80 + 0.13 * k + 0.015 * j[0]
        d = y - (y0 - 0.25 * sx + 0.75 * sx**2)
        bone += 0.16 * _band(d, 0.028 + 0.002 * k) * (ax > 0.08) * (ax < half_width - 0.1)
        # anterior ribs, fainter: from the side down towards the sternum
        ya = -0.55 + 0.13 * k
        d = y - (ya + 0.28 * (0.85 - ax))
        bone += 0.08 * _band(d, 0.03) * (ax > 0.28) * (ax < 0.85) * (ya < 0.4)
    # clavicles: a slight S from the sternum out to the shoulders
    d = y - (-0.70 - 0.14 * (ax - 0.1) + 0.08 * np.sin(np.pi * ax / 0.6) * (ax < 0.6))
    bone += 0.3 * _band(d, 0.035) * (ax > 0.06) * (ax < 0.82)
    bone += 0.3 * (((ax - 0.95) / 0.14) ** 2 + ((y + 0.64) / 0.16) ** 2 < 1)  # humeral heads
    bone += 0.1 * _band(ax - (0.80 - 0.18 * (y + 0.7)), 0.02) * (y > -0.7) * (y < 0.0)
    return bone


def _hilar_vessels(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vessels tapering out of each hilum, and the hilar shadows themselves."""
    out = np.zeros(x.shape, np.float32)
    for sign in (-1, 1):
        hx, hy = sign * 0.22, -0.08
        for angle in rng.uniform(0.1 * np.pi, 0.95 * np.pi, 24):
            dx, dy = sign * np.sin(angle), -np.cos(angle)
            length = rng.uniform(0.3, 0.6)
            t = np.clip((x - hx) * dx + (y - hy) * dy, 0, length)
            dist = np.hypot(x - hx - t * dx, y - hy - t * dy)
            out += (
                np.exp(-((dist / (0.010 * (1.2 - t / length))) ** 2))
                * (1 - t / length)
                * np.clip((t - 0.04) / 0.1, 0, 1)
            )
        out += 1.2 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / 0.06**2)
    return out


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
