"""Host side of the serial link to the RSA sync controller.

Frame codec, reliable link and the typed :class:`SyncController` API. Depends
on pyserial and small protocol libraries (``cobs``) only.
"""
