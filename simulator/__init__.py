"""Everything that stands in for hardware.

The virtual sync controller (the firmware's behaviour), virtual detectors and
the physically based stereo radiograph renderer with ground truth. Frames are
handed over as pixel arrays with metadata, as a detector SDK would. Never
imports ``acquisition``.
"""
