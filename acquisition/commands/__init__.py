"""One module per ``rsa-station`` subcommand.

Each module keeps its top level import-light (argparse, pathlib): heavy
libraries are imported inside ``run`` so that, for example,
``rsa-station reconstruct`` never imports FastAPI or uvicorn.
"""
