"""trackerd's edges: sockets, servers, access checks, files, systemd.

Everything here does I/O; the logic it drives lives in trackerd.core.
"""
