"""The wire: how values are encoded (:mod:`.codec`), the envelope of requests and replies
(:mod:`.protocol`), and multipart frames on ZeroMQ sockets (:mod:`.frames`). No I/O policy, no
knowledge of daemons: this folder can be reviewed against ``docs/protocol.md`` on its own.
"""
