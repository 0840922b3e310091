"""The station service: workflow, exam store, all file and network I/O, CLI, UI."""

__version__ = "0.1.0"
