"""Linear attenuation of the materials in a radiograph, at the beam's effective energy.

The renderer is monochromatic at an effective energy that follows the tube
voltage (:func:`effective_energy_kev`). Attenuation at 40 keV is taken from the NIST
XCOM / Hubbell & Seltzer (NISTIR 5632) mass attenuation tables times density,
and scaled with energy as a power law fitted between 40 and 60 keV. Beam
hardening enters only through the choice of effective energy.
"""

from __future__ import annotations

# name: (mu at 40 keV in 1/mm, power-law exponent p: mu(E) = mu40 * (40/E)**p)
MATERIALS: dict[str, tuple[float, float]] = {
    "soft": (0.0268 * 1.03, 0.74),  # ICRU soft tissue ~ water, density 1.03
    "fat": (0.0240 * 0.95, 0.70),
    "air": (0.0, 0.0),  # bowel gas
    "cortical": (0.0665 * 1.92, 2.0),  # cortical bone (ICRP), density 1.92
    "cancellous": (0.0410 * 1.18, 1.7),  # trabecular bone + marrow, density 1.18
    "pmma": (0.0245 * 1.19, 0.72),  # cage plates
    "pe": (0.0210 * 0.94, 0.70),  # UHMWPE liners and inserts
    "titanium": (0.222 * 4.43, 2.6),  # Ti-6Al-4V
    "cocr": (0.420 * 8.3, 2.6),  # CoCrMo
    "tantalum": (1.09 * 16.6, 2.4),  # RSA beads and cage markers (K edge 67.4 keV)
}

METALS = frozenset({"titanium", "cocr"})


def effective_energy_kev(kv: float) -> float:
    """Effective energy of the beam behind the patient for a tube voltage (kVp).

    A filtered tungsten spectrum's mean is about 0.4 kVp + 12 keV at the
    entrance; 10–20 cm of tissue harden it by 5–8 keV, which a monochromatic
    model must include or it overstates the attenuation of thick parts
    several-fold: 0.5 kVp + 12 keV (65 kVp: 44 keV; 85 kVp: 54 keV).
    """
    return 0.5 * float(kv) + 12.0


def mu(material: str, kv: float) -> float:
    """Linear attenuation coefficient (1/mm) of ``material`` for a beam at ``kv``."""
    mu40, p = MATERIALS[material]
    return mu40 * (40.0 / effective_energy_kev(kv)) ** p
