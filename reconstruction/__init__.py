"""The numeric core of the RSA station.

Pure: arrays and dataclasses in, results out. No files, no network, no clock;
imports none of ``acquisition``, ``simulator`` or ``firmware_bridge``.
"""
