"""Synthetic LArTPC events shaped like PILArNet: the project's embedded default data.

`generate(n_events, spatial_size, seed)` returns `Event`s in the five-type convention
(0 HIP, 1 MIP, 2 Shower, 3 Delta, 4 Michel) on 0.3 cm voxels, energies in MeV.

Physics model (all lengths in cm unless stated; 1 voxel = 0.3 cm):
- Every particle is a polyline of ~1-voxel steps (a random walk of the direction with a Highland
  multiple-scattering angle per step, small-angle accumulation) and every step has a stopping power
  dE/dx (MeV/cm) with a Landau-like (Moyal) fluctuation. Steps are voxelised by an exact 3D line
  traversal (energy per voxel proportional to the path length inside it), then spread by a transverse
  Gaussian of `diffusion_voxels` (integrated over the 3x3x3 neighbourhood), as the drift does.
- MIP (muon/pion): dE/dx ~2.1 MeV/cm, with the Bragg rise dE/dx(r) = 17 (r m_p/m_mu)^-0.42 MeV/cm
  over the last few cm of a stopping muon (r = residual range; same beta-gamma as a proton of range
  r m_p/m_mu); stopping muons end inside the world, the others leave it or end in flight.
- HIP (proton): kinetic energy T log-uniform, range from the energy (T = 17/0.58 r^0.58, the integral
  of the Bragg curve dE/dx = 17 r^-0.42 MeV/cm); a proton that reaches the world's edge leaves it.
- Shower: a photon converts after an exponential gap (9/7 X0) into e+e-; electrons travel Exp(X0)
  legs ionising 2.1 MeV/cm and radiate bremsstrahlung photons (1/k spectrum) until they fall under the
  critical energy; under it they still radiate, dN/dk = 4/(3 X0 k) per cm above `brems_min_mev`.
  Photons under `pair_min_mev` (the softest brems photons, those radiated under the critical energy,
  and 0.2-1.5 MeV ones emitted every ~`blip_cm` along the legs) fly the NIST free path of argon for
  their energy, Compton-scatter (Klein-Nishina) and fly on, until they are absorbed: each scatter
  frees an electron, an isolated blip. So a shower breaks into tens of pieces per 100 MeV, as the
  real sample's showers do. One instance per primary shower.
  Rain showers start as electrons (no gap) with probability `electron_fraction`.
- Michel: the same electron cascade from the end of a stopping muon, energy from the Michel spectrum
  times `michel_visible` (tuned so Michel voxels per event match Table I).
- Delta: knock-on electrons (1/T^2 spectrum above `delta_mev[0]`) off muon and proton tracks (in
  proportion to track length) at the kinematic angle.
- Particles come from shared interaction vertices (sometimes nearly co-linear) or are independent rain.

True scale and cropping (SPEC §6): the physics never depends on the grid. Every event is built in a
world of W = max(L, 512) voxels (153.6 cm or more) with the 512-voxel model (true lengths, energies
and particle counts; counts grow with sqrt(W/512) beyond that), then cropped to the L^3 window around
one of its interaction vertices (jittered by up to L/4), as PILArNet's 192px images are crops of
larger events: particles enter and leave the crop, and most of the event's particles lie outside it.
At L = 512 the crop is the whole world, and the per-class presence, instance counts and voxel totals
follow the paper's Table I (slightly above the targets because particles leaving the grid are lost).

Overlaps (as PILArNet, SPEC §6): the energy of a voxel is the sum of all deposits; its semantic and
instance label are those of the lowest-ranked particle with at least `label_min_mev` in it. Particles
are ranked HIP, MIP, Delta, Michel, Shower (creation order within a class): dense track cores keep their
label where daughters and showers overlap them. Instances are then renumbered 0..K-1 in rank order.
Voxels under `threshold_mev` are dropped; deposits outside the grid are clipped.

Determinism: event i uses the stream `SeedSequence(seed, spawn_key=(i,))`, so generate(n)[:k] ==
generate(k) and events can be made one at a time (`generate_event`).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from spice.data.event import PILARNET_FIVETYPES, VOXEL_SIZE_CM, Event

HIP, MIP, SHOWER, DELTA, MICHEL = range(5)
RANK = {HIP: 0, MIP: 1, DELTA: 2, MICHEL: 3, SHOWER: 4}  # label priority where particles overlap
M_E, M_MU, M_P = 0.511, 105.66, 938.27  # MeV
MOYAL_MEAN = 0.5772156649 + np.log(2.0)  # mean of the standard Moyal distribution
MIN_CROP_VOXELS = 100  # a crop holding fewer voxels is moved to the next vertex


@dataclass
class SynthConfig:
    """Knobs of the generator; defaults reproduce Table I at spatial_size 512."""

    threshold_mev: float = 0.01        # voxels below this are dropped
    label_min_mev: float = 0.002       # a particle labels a voxel only with at least this much of its own
    diffusion_voxels: float = 0.55     # transverse spread (Gaussian sigma) of the charge
    mip_dedx: float = 2.1              # MeV/cm
    landau_width: float = 0.12         # relative width of the Moyal fluctuation per step
    x0_cm: float = 14.0                # radiation length of argon
    critical_mev: float = 32.0         # electrons below this stop radiating (argon)
    pair_min_mev: float = 10.0         # softer photons Compton-scatter instead of converting (argon: ~10 MeV)
    photo_mev: float = 0.08            # photons softer than this are absorbed where they next interact
    max_compton: int = 24              # interactions followed per soft photon (then it is absorbed)
    blip_cm: float = 4.0               # mean e± path between soft (0.2-1.5 MeV) photon emissions
    brems_min_mev: float = 0.2         # softest photon followed from electrons under the critical energy
    # per-class presence probability, mean and sd of the count when present (Table I)
    hip_count: tuple[float, float, float] = (0.88, 4.0, 3.0)
    mip_count: tuple[float, float, float] = (0.97, 5.0, 3.0)
    shower_count: tuple[float, float, float] = (0.98, 8.4, 4.0)
    delta_count: tuple[float, float, float] = (0.70, 4.0, 2.0)
    michel_count: tuple[float, float, float] = (0.31, 2.2, 1.0)
    extra_vertices: float = 1.0        # Poisson mean of vertices beyond the first
    from_vertex: tuple[float, float, float] = (0.85, 0.6, 0.6)  # P(from a vertex) for HIP, MIP, Shower
    colinear: float = 0.1              # P(a vertex particle nearly copies the previous direction)
    hip_mev: tuple[float, float] = (50.0, 285.0)          # log-uniform kinetic energy (ranges 2.5-50 cm)
    mip_range_cm: tuple[float, float] = (16.0, 330.0)      # log-uniform, length before leaving/stopping
    shower_mev: tuple[float, float] = (17.0, 560.0)       # log-uniform primary energy
    electron_fraction: float = 0.3     # rain showers that start as an electron (no gap)
    delta_mev: tuple[float, float] = (3.0, 40.0)          # 1/T^2 spectrum
    michel_visible: float = 0.5        # fraction of the Michel spectrum energy given to the Michel cascade
    margin: float = 0.05               # fraction of the world kept free around vertices and stopping points
    world: int = 512                   # voxels: events are built in max(L, world)^3 and cropped to L^3
    crop_jitter: float = 0.25          # crop centre = a vertex + uniform(-j, j) * L per axis


# ----------------------------------------------------------------------------- geometry and physics

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,3) random unit vectors."""
    return _unit(rng.standard_normal((n, 3)))


def _tilt(rng: np.random.Generator, axis: np.ndarray, cos_theta: np.ndarray) -> np.ndarray:
    """(n,3) unit vectors at polar angle arccos(cos_theta) around `axis` (n,3), uniform azimuth."""
    r = rng.standard_normal(axis.shape)
    perp = _unit(r - (r * axis).sum(1, keepdims=True) * axis)
    sin = np.sqrt(np.clip(1 - cos_theta ** 2, 0, 1))
    return _unit(cos_theta[:, None] * axis + sin[:, None] * perp)


def _highland(p_mev: np.ndarray, mass: float, step_cm: np.ndarray, x0_cm: float) -> np.ndarray:
    """Plane-projected multiple-scattering angle (rad) over a step of `step_cm`."""
    e = np.sqrt(p_mev ** 2 + mass ** 2)
    bcp = p_mev ** 2 / e
    x = np.maximum(step_cm / x0_cm, 1e-6)
    return np.clip(13.6 / bcp * np.sqrt(x) * (1 + 0.038 * np.log(x)), 0.0, 1.0)


def _momentum(t_mev: np.ndarray, mass: float) -> np.ndarray:
    return np.sqrt(np.maximum(t_mev, 1e-3) * (np.maximum(t_mev, 1e-3) + 2 * mass))


def _landau(rng: np.random.Generator, shape, width: float) -> np.ndarray:
    """Multiplicative Landau-like (Moyal) factor, mean ~1; Moyal = -ln(Z^2) for Z ~ N(0,1)."""
    x = -np.log(np.maximum(rng.standard_normal(shape) ** 2, 1e-12))
    return np.clip(1 + width * (x - MOYAL_MEAN), 0.3, 6.0)


def _walk(rng, start, direction, length_vox, theta_fn, step_vox=1.0):
    """Random-walk polylines, vectorised over n paths.

    start, direction (n,3) voxels; length_vox (n,); theta_fn(k, n_steps, step_vox) -> (n,K) angle per step.
    Returns a, b (S,3) segment ends, path index (S,), step index (S,), n_steps (n,), step_vox (n,).
    """
    n = len(start)
    n_steps = np.maximum(np.ceil(length_vox / step_vox), 1).astype(np.int64)
    step = length_vox / n_steps
    K = int(n_steps.max()) if n else 0
    k = np.arange(K)[None, :]
    valid = k < n_steps[:, None]
    theta = theta_fn(k, n_steps, step) * valid
    w = direction[:, None, :] + np.cumsum(rng.standard_normal((n, K, 3)) * theta[..., None], axis=1)
    pts = np.cumsum(_unit(w) * step[:, None, None], axis=1) + start[:, None, :]
    pts = np.concatenate([start[:, None, :], pts], axis=1)
    path = np.broadcast_to(np.arange(n)[:, None], (n, K))[valid]
    return pts[:, :-1][valid], pts[:, 1:][valid], path, np.broadcast_to(k, (n, K))[valid], n_steps, step


def traverse(a: np.ndarray, b: np.ndarray):
    """Exact voxel traversal of straight segments a->b, (M,3) float voxel coordinates.

    Returns (segment (P,) int64, voxel (P,3) int64, length (P,) voxels, fraction (P,3) sub-voxel
    position of the piece's midpoint): one piece per voxel a segment crosses; lengths sum to |b-a|.
    """
    m = len(a)
    d = b - a
    fa = np.floor(a)
    cnt = np.abs(np.floor(b) - fa).astype(np.int64)
    segs, ts = [np.arange(m), np.arange(m)], [np.zeros(m), np.ones(m)]
    for ax in range(3):
        c = cnt[:, ax]
        seg = np.repeat(np.arange(m), c)
        j = np.arange(len(seg)) - np.repeat(np.cumsum(c) - c, c)
        up = d[seg, ax] > 0
        plane = fa[seg, ax] + np.where(up, j + 1, -j)
        segs.append(seg)
        ts.append(np.clip((plane - a[seg, ax]) / d[seg, ax], 0.0, 1.0))
    seg = np.concatenate(segs)
    t = np.concatenate(ts)
    order = np.argsort(2.0 * seg + t, kind="stable")
    seg, t = seg[order], t[order]
    same = seg[1:] == seg[:-1]
    s, t0, t1 = seg[:-1][same], t[:-1][same], t[1:][same]
    length = (t1 - t0) * np.linalg.norm(d, axis=1)[s]
    keep = length > 1e-9
    s, t0, t1, length = s[keep], t0[keep], t1[keep], length[keep]
    mid = a[s] + (0.5 * (t0 + t1))[:, None] * d[s]
    vox = np.floor(mid)
    return s, vox.astype(np.int64), length, mid - vox


# ----------------------------------------------------------------------------- particle builders

class _Deposits:
    """Accumulates segments (a, b, dE/dx MeV/cm, particle) and the particle table of one event."""

    def __init__(self):
        self.a, self.b, self.dedx, self.pid = [], [], [], []
        self.cls: list[int] = []

    def new(self, cls: int, n: int = 1) -> np.ndarray:
        ids = np.arange(len(self.cls), len(self.cls) + n)
        self.cls.extend([cls] * n)
        return ids

    def add(self, a, b, dedx, pid):
        self.a.append(a), self.b.append(b), self.dedx.append(dedx), self.pid.append(pid)


def _tracks(rng, dep, cfg, start, direction, length_vox, r_end_cm, kind, pid):
    """Muon (kind=MIP) or proton (HIP) tracks; r_end_cm = residual range left at the path end."""
    if len(start) == 0:
        return None
    vox = VOXEL_SIZE_CM
    mass = M_MU if kind == MIP else M_P

    def residual(k, n_steps, step):  # residual range (cm) at the middle of each step
        return r_end_cm[:, None] + (n_steps[:, None] - k - 0.5) * step[:, None] * vox

    def kinetic(r):
        return cfg.mip_dedx * r if kind == MIP else proton_kinetic(r)

    def theta(k, n_steps, step):
        p = _momentum(kinetic(residual(k, n_steps, step)), mass)
        return _highland(p, mass, step[:, None] * vox, cfg.x0_cm)

    a, b, path, k, n_steps, step = _walk(rng, start, direction, length_vox, theta)
    r = r_end_cm[path] + (n_steps[path] - k - 0.5) * step[path] * vox  # residual range per step (cm)
    # Bragg curve (a muon of residual range r has the beta-gamma of a proton of range r m_p/m_mu),
    # never below the minimum-ionising plateau for muons
    bragg = np.minimum(17.0 * np.maximum(r * (M_P / mass), 0.05) ** -0.42, 60.0)
    dedx = np.maximum(bragg, cfg.mip_dedx) if kind == MIP else bragg
    dep.add(a, b, dedx * _landau(rng, len(a), cfg.landau_width), pid[path])
    return b, path, n_steps


def proton_kinetic(range_cm):
    """Kinetic energy (MeV) of a proton of residual range r (cm): the integral of 17 r^-0.42 MeV/cm."""
    return 17.0 / 0.58 * np.maximum(range_cm, 0) ** 0.58


def proton_range(kinetic_mev):
    """Range (cm) of a proton of kinetic energy T (MeV), the inverse of `proton_kinetic`."""
    return (0.58 / 17.0 * np.asarray(kinetic_mev, float)) ** (1 / 0.58)


# Total attenuation coefficient mu/rho (cm^2/g) of photons in argon (NIST XCOM), and liquid argon's density.
_ATTEN_MEV = np.array([0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0,
                       6.0, 8.0, 10.0])
_ATTEN_CM2_G = np.array([0.2229, 0.1629, 0.1356, 0.1224, 0.1059, 0.0948, 0.0865, 0.0800, 0.0704, 0.0634,
                         0.0569, 0.0519, 0.0449, 0.0378, 0.0341, 0.0319, 0.0306, 0.0295, 0.0291])
LAR_DENSITY = 1.396  # g/cm^3


def photon_free_path_cm(k_mev: np.ndarray) -> np.ndarray:
    """Mean free path (cm) of photons of energy k (MeV) in liquid argon, log-log interpolated."""
    k = np.clip(np.asarray(k_mev, float), _ATTEN_MEV[0], _ATTEN_MEV[-1])
    mu = np.exp(np.interp(np.log(k), np.log(_ATTEN_MEV), np.log(_ATTEN_CM2_G)))
    return 1.0 / (mu * LAR_DENSITY)


def _klein_nishina(rng: np.random.Generator, k: np.ndarray) -> np.ndarray:
    """Scattered-photon energy fraction eps = k'/k of Compton scattering (Klein-Nishina), by rejection
    from a 1/eps proposal on [1/(1 + 2k/m_e), 1]; k (n,) MeV -> eps (n,)."""
    kappa = k / M_E
    eps0 = 1.0 / (1.0 + 2.0 * kappa)
    eps = np.empty(len(k))
    todo = np.arange(len(k))
    while len(todo):
        e = eps0[todo] ** rng.random(len(todo))
        cos = 1.0 - (1.0 / e - 1.0) / kappa[todo]
        ok = 2.0 * rng.random(len(todo)) < 1.0 + e ** 2 - e * (1.0 - cos ** 2)
        eps[todo[ok]] = e[ok]
        todo = todo[~ok]
    return eps


def _compton_chain(rng, cfg, p0, d0, k, who):
    """Soft photons (k < pair_min_mev) through liquid argon: each flies an exponential free path
    (`photon_free_path_cm`), Compton-scatters (Klein-Nishina) and goes on with k' = eps k in the new
    direction, until it falls under `photo_mev` and is absorbed where it next interacts (or after
    `max_compton` scatters). Returns the electrons it sets free: positions (n,3) voxels, directions
    (n,3), kinetic energies (n,) MeV, owners (n,): the isolated blips around a shower."""
    out_p, out_d, out_e, out_w = [], [], [], []
    pos, dirs, k, who = p0, d0, np.asarray(k, float), who
    for i in range(cfg.max_compton + 1):
        if len(k) == 0:
            break
        pos = pos + dirs * (rng.exponential(photon_free_path_cm(k)) / VOXEL_SIZE_CM)[:, None]
        absorb = (k < cfg.photo_mev) | (i == cfg.max_compton)
        eps = np.where(absorb, 0.0, _klein_nishina(rng, np.maximum(k, cfg.photo_mev)))
        cos = np.clip(1.0 - (1.0 / np.maximum(eps, 1e-9) - 1.0) * M_E / k, -1.0, 1.0)
        out_p.append(pos), out_d.append(_isotropic(rng, len(k))), out_e.append(k * (1.0 - eps)), out_w.append(who)
        go = ~absorb
        pos, k, who = pos[go], (eps * k)[go], who[go]
        dirs = _tilt(rng, dirs[go], cos[go])
    e = np.concatenate(out_e) if out_e else np.empty(0)
    keep = e >= cfg.threshold_mev
    cat = (lambda xs, shape: np.concatenate(xs)[keep] if xs else np.empty(shape))
    return cat(out_p, (0, 3)), cat(out_d, (0, 3)), e[keep], cat(out_w, (0,)).astype(np.int64)


def _cascade(rng, dep, cfg, start, direction, energy, pid, photon):
    """Electromagnetic cascades from primaries (electrons, or photons when `photon`), vectorised.

    Energies in MeV, lengths in cm at true scale (X0, critical energy); deposits 2.1 MeV/cm along e± legs.
    """
    vox = VOXEL_SIZE_CM
    x0, ecut, pmin = cfg.x0_cm, cfg.critical_mev, cfg.pair_min_mev
    pos, dirs, e, owner, final = (np.empty((0, 3)), np.empty((0, 3)), np.empty(0),
                                  np.empty(0, np.int64), np.empty(0, bool))

    def photons(p0, d0, k, who):  # photons -> pair legs (hard) or chains of Compton electrons (soft)
        hard = k >= pmin
        h = np.flatnonzero(hard)
        conv = p0[h] + d0[h] * (rng.exponential(9 / 7 * x0, len(h)) / vox)[:, None]
        v = rng.uniform(0.05, 0.95, len(h))
        ang = np.cos(np.minimum(M_E / np.maximum(k[h], M_E) + 0.02, 0.5))
        cp, cd, ce, cw = _compton_chain(rng, cfg, p0[~hard], d0[~hard], k[~hard], who[~hard])
        newp = np.concatenate([conv, conv, cp])
        newd = np.concatenate([_tilt(rng, d0[h], ang), _tilt(rng, d0[h], ang), cd])
        newe = np.concatenate([v * k[h], (1 - v) * k[h], ce])
        neww = np.concatenate([who[h], who[h], cw])
        newf = np.concatenate([np.zeros(2 * len(h), bool), np.ones(len(ce), bool)])
        return newp, newd, newe, neww, newf

    if photon.any():
        p = photons(start[photon], direction[photon], energy[photon], pid[photon])
        pos, dirs, e, owner, final = p
    el = ~photon
    pos, dirs = np.concatenate([pos, start[el]]), np.concatenate([dirs, direction[el]])
    e, owner = np.concatenate([e, energy[el]]), np.concatenate([owner, pid[el]])
    final = np.concatenate([final, np.zeros(int(el.sum()), bool)])

    for _ in range(64):
        if len(e) == 0:
            break
        final = final | (e < ecut)
        # electrons under the critical energy still radiate: dN/dk = 4/(3 X0 k) per cm for k in
        # [brems_min_mev, e]; the photons take up to half the electron's energy, the rest is ionisation
        kmin = cfg.brems_min_mev
        rad_per_cm = np.where(final & (e > kmin), 4 / (3 * x0) * np.log(np.maximum(e, kmin) / kmin), 0.0)
        n_rad = rng.poisson(rad_per_cm * e / cfg.mip_dedx)
        rad_leg = np.repeat(np.arange(len(e)), n_rad)
        k_rad = kmin * (e[rad_leg] / kmin) ** rng.random(len(rad_leg))
        run = np.cumsum(k_rad)
        run -= np.concatenate([[0.0], run])[np.repeat(np.cumsum(n_rad) - n_rad, n_rad)]
        ok = run <= 0.5 * e[rad_leg]
        rad_leg, k_rad = rad_leg[ok], k_rad[ok]
        e_rad = np.bincount(rad_leg, k_rad, minlength=len(e))
        leg_cm = np.where(final, (e - e_rad) / cfg.mip_dedx,
                          np.minimum(rng.exponential(x0, len(e)), e / cfg.mip_dedx))
        leg_cm = np.maximum(leg_cm, 1e-3)
        e_mid = e.copy()

        def theta(k, n_steps, step, e_mid=e_mid):
            ek = e_mid[:, None] - (k + 0.5) * step[:, None] * vox * cfg.mip_dedx
            return _highland(_momentum(np.maximum(ek, 0.05), M_E), M_E, step[:, None] * vox, cfg.x0_cm)

        a, b, path, _, _, _ = _walk(rng, pos, dirs, leg_cm / vox, theta)
        dep.add(a, b, cfg.mip_dedx * _landau(rng, len(a), cfg.landau_width), owner[path])
        last = np.zeros(len(e), np.int64)
        np.maximum.at(last, path, np.arange(len(path)))
        end, end_dir = b[last], _unit(b[last] - a[last])
        e_left = e - leg_cm * cfg.mip_dedx
        # soft photons radiated along the legs -> isolated Compton-like blips near the shower
        n_blip = rng.poisson(leg_cm / cfg.blip_cm) * (~final)
        soft_leg = np.repeat(np.arange(len(e)), n_blip)
        k_blip = rng.uniform(0.2, 1.5, len(soft_leg))
        e_left = e_left - np.bincount(soft_leg, k_blip, minlength=len(e))
        blip_leg = np.concatenate([soft_leg, rad_leg])
        first = np.searchsorted(path, blip_leg)
        n_seg = np.bincount(path, minlength=len(e))[blip_leg]
        at = first + (rng.random(len(blip_leg)) * n_seg).astype(np.int64)
        blip_dir = np.concatenate([_isotropic(rng, len(soft_leg)), _unit(b[at[len(soft_leg):]] - a[at[len(soft_leg):]])])
        bp = photons(a[at], blip_dir, np.concatenate([np.minimum(k_blip, 0.99 * pmin), k_rad]), owner[blip_leg])
        go = ~final & (e_left > 0)
        if not go.any() and len(at) == 0:
            break
        u = np.exp(rng.uniform(np.log(0.01), 0.0, len(e)))  # bremsstrahlung fraction, 1/k spectrum
        k = (u * e_left)[go]
        gp = photons(end[go], _tilt(rng, end_dir[go], np.cos(np.minimum(M_E / e_left[go] + 0.01, 0.5))),
                     k, owner[go])
        pos = np.concatenate([end[go], gp[0], bp[0]])
        dirs = np.concatenate([end_dir[go], gp[1], bp[1]])
        e = np.concatenate([((1 - u) * e_left)[go], gp[2], bp[2]])
        owner = np.concatenate([owner[go], gp[3], bp[3]])
        final = np.concatenate([np.zeros(int(go.sum()), bool), gp[4], bp[4]])


def _michel_energy(rng, n: int) -> np.ndarray:
    """Michel spectrum x^2 (3 - 2x), x = T / 52.8 MeV, by rejection."""
    out = np.empty(0)
    while len(out) < n:
        x = rng.uniform(0, 1, 4 * n + 8)
        out = np.concatenate([out, x[rng.uniform(0, 1, len(x)) < x ** 2 * (3 - 2 * x)]])
    return 52.8 * out[:n]


def _count(rng, presence_mean_sd, c: float) -> int:
    """0 with prob 1-presence, else 1 + negative binomial of mean (mean-1)c and variance sd^2 c."""
    presence, mean, sd = presence_mean_sd
    if rng.random() >= presence:
        return 0
    mu, var = (mean - 1) * c, sd ** 2 * c
    if var <= mu:
        return 1 + int(rng.poisson(mu))
    return 1 + int(rng.negative_binomial(mu ** 2 / (var - mu), mu / var))


def _loguniform(rng, lo_hi, n):
    lo, hi = lo_hi
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _exit_distance(p: np.ndarray, d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Distance along unit d from p (inside [lo,hi]^3) to the box boundary, (n,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d > 0, (hi - p) / d, np.where(d < 0, (lo - p) / d, np.inf))
    return t.min(axis=1)


# ----------------------------------------------------------------------------- event assembly

def _build(rng: np.random.Generator, W: int, cfg: SynthConfig) -> tuple[_Deposits, np.ndarray]:
    """All particles of one event in a W^3 world of 0.3 cm voxels, at true scale; returns the deposits
    and the interaction vertices (V,3) in voxels."""
    c = np.sqrt(max(W / 512.0, 1.0))  # more particles in a larger world, never fewer
    vox = VOXEL_SIZE_CM
    lo, hi = cfg.margin * W, (1 - cfg.margin) * W
    dep = _Deposits()
    vertices = rng.uniform(lo, hi, (1 + rng.poisson(cfg.extra_vertices * c), 3))
    last_dir = {}

    def origins(n, p_vertex):
        """Start points and directions: from shared vertices (sometimes co-linear) or rain."""
        at_v = rng.random(n) < p_vertex
        vi = rng.integers(0, len(vertices), n)
        pts = np.where(at_v[:, None], vertices[vi], rng.uniform(lo, hi, (n, 3)))
        dirs = _isotropic(rng, n)
        for i in np.flatnonzero(at_v):
            if vi[i] in last_dir and rng.random() < cfg.colinear:
                dirs[i] = _tilt(rng, last_dir[vi[i]][None], np.array([np.cos(0.05)]))[0]
            last_dir[vi[i]] = dirs[i]
        return pts, dirs

    n_hip, n_mip, n_shw = (_count(rng, x, c) for x in (cfg.hip_count, cfg.mip_count, cfg.shower_count))
    n_delta = _count(rng, cfg.delta_count, c) if n_mip else 0
    n_michel = min(_count(rng, cfg.michel_count, c), n_mip)

    # protons: range from the kinetic energy; one that reaches the world's edge leaves it in flight
    start, dirs = origins(n_hip, cfg.from_vertex[0])
    proton_cm = proton_range(_loguniform(rng, cfg.hip_mev, n_hip))
    length = np.minimum(proton_cm / vox, _exit_distance(start, dirs, 0, W))
    _tracks(rng, dep, cfg, start, dirs, length, proton_cm - length * vox, HIP, dep.new(HIP, n_hip))

    # muons/pions: the first n_michel stop inside (and get a Michel), the rest leave or end in flight
    start, dirs = origins(n_mip, cfg.from_vertex[1])
    length = _loguniform(rng, cfg.mip_range_cm, n_mip) / vox
    stop = np.arange(n_mip) < n_michel
    length[stop] = np.minimum(length[stop], _exit_distance(start[stop], dirs[stop], lo, hi))
    r_end = np.where(stop, 0.0, rng.uniform(20, 500, n_mip))
    mip = _tracks(rng, dep, cfg, start, dirs, length, r_end, MIP, dep.new(MIP, n_mip))

    if n_mip:
        b, path, _ = mip
        a = dep.a[-1]
        # delta rays: knock-on electrons from random in-world points of the muon and proton tracks
        seg_a, seg_b = (np.concatenate([dep.a[0], a]), np.concatenate([dep.b[0], b])) if n_hip else (a, b)
        cand = np.flatnonzero(np.all((seg_b >= 0) & (seg_b < W), axis=1))
        if n_delta and len(cand):
            at = cand[rng.integers(0, len(cand), n_delta)]
            lo_t, hi_t = cfg.delta_mev
            t = 1 / rng.uniform(1 / hi_t, 1 / lo_t, n_delta)  # 1/T^2 spectrum
            cos = np.sqrt(t / (t + 2 * M_E))
            d = _tilt(rng, _unit(seg_b[at] - seg_a[at]), cos)
            _cascade(rng, dep, cfg, seg_b[at], d, t, dep.new(DELTA, n_delta), np.zeros(n_delta, bool))
        # Michel electrons at the ends of the stopping muons
        if n_michel:
            ends = np.array([np.flatnonzero(path == i)[-1] for i in range(n_michel)])
            _cascade(rng, dep, cfg, b[ends], _isotropic(rng, n_michel),
                     _michel_energy(rng, n_michel) * cfg.michel_visible, dep.new(MICHEL, n_michel),
                     np.zeros(n_michel, bool))

    # showers: photons (with a conversion gap) from vertices, photons or electrons as rain
    at_vertex = rng.random(n_shw) < cfg.from_vertex[2]
    start = np.where(at_vertex[:, None], vertices[rng.integers(0, len(vertices), n_shw)],
                     rng.uniform(lo, hi, (n_shw, 3)))
    photon = at_vertex | (rng.random(n_shw) >= cfg.electron_fraction)
    energy = _loguniform(rng, cfg.shower_mev, n_shw)
    _cascade(rng, dep, cfg, start, _isotropic(rng, n_shw), energy, dep.new(SHOWER, n_shw), photon)
    return dep, vertices


def _voxelise(dep: _Deposits, L: int, cfg: SynthConfig, origin=(0.0, 0.0, 0.0)):
    """Segments -> (coords, energy, particle) in the L^3 crop whose corner is `origin` (world voxels),
    with transverse spread, clipping, overlap resolution."""
    cls = np.asarray(dep.cls, np.int64)
    if not dep.a or len(cls) == 0:
        return np.empty((0, 3), np.int64), np.empty(0), np.empty(0, np.int64), cls
    shift = np.asarray(origin, float)
    a, b = np.concatenate(dep.a) - shift, np.concatenate(dep.b) - shift
    dedx, pid = np.concatenate(dep.dedx), np.concatenate(dep.pid)
    near = np.all((np.minimum(a, b) < L + 2) & (np.maximum(a, b) >= -2), axis=1)  # only what reaches the crop
    a, b, dedx, pid = a[near], b[near], dedx[near], pid[near]
    empty = (np.empty((0, 3), np.int64), np.empty(0), np.empty(0, np.int64), cls)
    if len(a) == 0:
        return empty
    seg, vox, length, frac = traverse(a, b)
    e = dedx[seg] * length * VOXEL_SIZE_CM
    # aggregate per (particle, voxel) with the energy-weighted sub-voxel position
    span = L + 4  # voxel keys with a 2-voxel guard band so neighbours of clipped voxels stay distinct
    vkey = ((vox[:, 0] + 2) * span + vox[:, 1] + 2) * span + vox[:, 2] + 2
    near = np.all((vox >= -1) & (vox <= L), axis=1)
    key = pid[seg][near] * span ** 3 + vkey[near]
    e, frac = e[near], frac[near]
    uk, inv = np.unique(key, return_inverse=True)
    esum = np.bincount(inv, e)
    fmean = np.stack([np.bincount(inv, e * frac[:, i]) for i in range(3)], 1) / np.maximum(esum, 1e-30)[:, None]
    p_of, vk = uk // span ** 3, uk % span ** 3
    v = np.stack([vk // span ** 2, (vk // span) % span, vk % span], 1) - 2
    # transverse Gaussian spread integrated over the 3x3x3 neighbourhood (separable, renormalised)
    sig = cfg.diffusion_voxels
    o = np.arange(-1, 2)
    w = ndtr((o[None, None, :] + 1 - fmean[..., None]) / sig) - ndtr((o[None, None, :] - fmean[..., None]) / sig)
    w /= w.sum(2, keepdims=True)  # (n,3 axes,3 offsets)
    w27 = (w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]).reshape(len(v), 27)
    off = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(27, 3)
    cv = (v[:, None, :] + off[None]).reshape(-1, 3)
    ce = (esum[:, None] * w27).ravel()
    cp = np.repeat(p_of, 27)
    ok = np.all((cv >= 0) & (cv < L), axis=1) & (ce > 0)
    cv, ce, cp = cv[ok], ce[ok], cp[ok]
    # overlap resolution: sum energy per voxel, label = lowest-ranked particle with enough energy
    rank_of = np.lexsort((np.arange(len(cls)), np.vectorize(RANK.get)(cls)))
    rank = np.empty(len(cls), np.int64)
    rank[rank_of] = np.arange(len(cls))
    r = rank[cp] + np.where(ce >= cfg.label_min_mev, 0, len(cls))
    if len(cv) == 0:
        return empty
    lin = (cv[:, 0] * L + cv[:, 1]) * L + cv[:, 2]
    order = np.argsort(lin * (2 * len(cls)) + r)  # keys unique: one entry per (voxel, particle)
    lin, ce, r = lin[order], ce[order], r[order]
    first = np.flatnonzero(np.r_[True, lin[1:] != lin[:-1]])
    energy = np.add.reduceat(ce, first)
    winner = rank_of[r[first] % len(cls)]
    keep = energy >= cfg.threshold_mev
    lin, energy, winner = lin[first][keep], energy[keep], winner[keep]
    coords = np.stack([lin // (L * L), (lin // L) % L, lin % L], 1)
    return coords, energy, winner, cls


def _event_from(dep: _Deposits, L: int, cfg: SynthConfig, source, origin=(0.0, 0.0, 0.0)) -> Event:
    coords, energy, particle, cls = _voxelise(dep, L, cfg, origin)
    present = np.unique(particle)
    ranks = np.array([RANK[c] for c in cls[present]], np.int64)
    ordered = present[np.lexsort((present, ranks))]  # rank order, then creation order
    new_id = np.full(len(cls), -1, np.int64)
    new_id[ordered] = np.arange(len(ordered))
    return Event(coords=coords.astype(np.int64), energy=energy.astype(np.float32),
                 semantic=cls[particle].astype(np.int64) if len(particle) else np.empty(0, np.int64),
                 instance=new_id[particle], spatial_size=int(L), labels=PILARNET_FIVETYPES, source=source)


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def generate_event(index: int, spatial_size: int = 512, seed: int = 0, config: SynthConfig | None = None) -> Event:
    """Event `index` of the synthetic stream `seed` (independent child stream per event)."""
    cfg = config or SynthConfig()
    L = int(spatial_size)
    if L < 16:
        raise ValueError(f"spatial_size must be at least 16 voxels, got {spatial_size}")
    rng = _rng(seed, index)
    W = max(L, cfg.world)
    dep, vertices = _build(rng, W, cfg)
    source = (f"synthetic:seed={seed}", int(index))
    if W == L:
        return _event_from(dep, L, cfg, source)
    # crop around a vertex (the next one when a crop holds almost nothing), jittered, inside the world
    event = None
    for v in rng.permutation(vertices):
        centre = v + rng.uniform(-cfg.crop_jitter, cfg.crop_jitter, 3) * L
        origin = np.floor(np.clip(centre - L / 2, 0, W - L))
        event = _event_from(dep, L, cfg, source, origin)
        if len(event) >= MIN_CROP_VOXELS:
            break
    return event


def generate(n_events: int, spatial_size: int = 512, seed: int = 0, config: SynthConfig | None = None) -> list[Event]:
    """`n_events` synthetic events on a spatial_size^3 grid of 0.3 cm voxels (see module docstring)."""
    return [generate_event(i, spatial_size, seed, config) for i in range(int(n_events))]


class SyntheticEvents:
    """The lazy sequence generate(n_events, spatial_size, seed): item i is made when asked for (about
    40 ms on one core), so a training stream of 10^5 distinct events costs no memory up front.
    Items are cached up to `cache` events (the first ones asked for), for datasets reused every epoch."""

    def __init__(self, n_events: int, spatial_size: int = 512, seed: int = 0, config: SynthConfig | None = None,
                 cache: int = 0):
        self.n_events, self.spatial_size, self.seed, self.config = int(n_events), int(spatial_size), int(seed), config
        self.cache, self._cached = int(cache), {}

    def __len__(self) -> int:
        return self.n_events

    def __getitem__(self, index: int) -> Event:
        index = int(index)
        if not 0 <= index < self.n_events:
            raise IndexError(f"synthetic event {index} out of range [0, {self.n_events})")
        event = self._cached.get(index)
        if event is None:
            event = generate_event(index, self.spatial_size, self.seed, self.config)
            if len(self._cached) < self.cache:
                self._cached[index] = event
        return event


def single_particle(kind: int, start, direction, size: float, spatial_size: int = 512, seed: int = 0,
                    config: SynthConfig | None = None) -> Event:
    """One particle alone in the grid, for tests and figures.

    kind: HIP or MIP (size = range in cm, stopping at the end), SHOWER (photon, size = MeV),
    MICHEL or DELTA (electron, size = MeV). start in voxels, direction any non-zero 3-vector.
    Built directly on the L^3 grid (no crop).
    """
    cfg = config or SynthConfig()
    rng = _rng(seed, 0)
    dep = _Deposits()
    p0 = np.asarray(start, float)[None]
    d0 = _unit(np.asarray(direction, float)[None])
    ids = dep.new(kind)
    if kind in (HIP, MIP):
        _tracks(rng, dep, cfg, p0, d0, np.array([size / VOXEL_SIZE_CM]), np.zeros(1), kind, ids)
    else:
        _cascade(rng, dep, cfg, p0, d0, np.array([float(size)]), ids, np.array([kind == SHOWER]))
    return _event_from(dep, int(spatial_size), cfg, (f"synthetic:single:seed={seed}", 0))


# ----------------------------------------------------------------------------- command line

def synth_main(argv: list[str] | None = None) -> int:
    """`spice data synth --out FILE.h5 --events N --size L --seed S`: write a PILArNet-M (v2) file."""
    parser = argparse.ArgumentParser(prog="spice data synth", description=synth_main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="grid size L (voxels of 0.3 cm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.events < 0:
        parser.error("--events must be non-negative")
    from tqdm import tqdm

    from spice.data.pilarnet_m import write_pilarnet_m

    events = [generate_event(i, args.size, args.seed) for i in tqdm(range(args.events), desc="synth", unit="ev")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".partial")
    try:
        write_pilarnet_m(events, tmp, layout="v2")
        os.replace(tmp, args.out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {args.events} events ({args.size}^3, seed {args.seed}) to {args.out}")
    return 0
