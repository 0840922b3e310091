"""Assembling a station from command-line choices (serve, exam, demo, tests).

``--simulate`` wires the virtual sync controller (``sim://station``, in this
process), the virtual detector pair and the simulator's station and cage files;
otherwise ``--controller URL`` names any pyserial port and ``--detectors DIR``
a folder watched for DICOM files, with ``--station`` and ``--cage`` giving the
geometry.
"""

from __future__ import annotations

import functools
from pathlib import Path

from acquisition.jsonio import load_model
from acquisition.service.detectors import FolderWatcher, SimDetectors
from acquisition.service.hardware import StationHardware
from acquisition.service.processing import Pipeline
from acquisition.service.runtime import Runtime
from reconstruction.errors import InputError
from reconstruction.geometry import Cage, Station

SIM_URL = "sim://station"


def sim_geometry(full_resolution: bool = True):
    """Station and cage of each region as the simulator builds them."""

    @functools.cache
    def geometry(region: str) -> tuple[Station, Cage]:
        from simulator.exam import simulate_exam

        probe = simulate_exam(region, 0, views=(), full_resolution=full_resolution)
        return Station.from_dict(probe.station), Cage.from_dict(probe.cage)

    return geometry


def file_geometry(station_path: str, cage_path: str):
    station = load_model(station_path, Station.from_dict, "station file")
    cage = load_model(cage_path, Cage.from_dict, "cage file")
    return lambda region: (station, cage)


def build_runtime(
    data_dir: str | Path,
    *,
    simulate: bool = False,
    controller: str | None = None,
    detectors: str | None = None,
    station: str | None = None,
    cage: str | None = None,
    full_resolution: bool = True,
    sim_seed: int | None = None,
    frame_timeout_s: float = 30.0,
    pacs: str | None = None,
) -> Runtime:
    if simulate:
        controller = controller or SIM_URL
        detectors = detectors or "sim"
    if controller and controller.startswith("sim://"):
        import simulator.controller  # noqa: F401  registers the sim:// URL scheme
    if not controller:
        raise InputError("--controller: a pyserial URL is needed (or --simulate)")
    if detectors in (None, "sim"):
        if not controller.startswith("sim://"):
            raise InputError(
                "--detectors: give the folder the detector console writes to "
                "(the virtual detectors need the simulated controller, sim://NAME)"
            )
        name = controller[len("sim://") :].split("?")[0]
        source = SimDetectors(name, full_resolution=full_resolution, seed=sim_seed)
    else:
        source = FolderWatcher(detectors)
    if station and cage:
        geometry = file_geometry(station, cage)
    elif detectors in (None, "sim"):
        geometry = sim_geometry(full_resolution)
    else:
        raise InputError("--station and --cage are needed with --detectors DIR")
    node = None
    if pacs:
        from acquisition.service.pacs import PacsNode

        node = PacsNode.parse(pacs)
    hw = StationHardware(controller, source)
    return Runtime(data_dir, hw, Pipeline(geometry), frame_timeout_s=frame_timeout_s, pacs=node)
