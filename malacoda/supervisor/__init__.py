"""Supervision: unit files (:mod:`.units`), starting and stopping (:mod:`.supervise`), the
per-unit monitor (:mod:`.monitor`), the daemon runner (:mod:`.runner`), log files
(:mod:`.logfile`) and systemd units (:mod:`.systemd`).
"""
