"""Daemons on other hosts over SSH: the paramiko connections (:mod:`.ssh`), port forwarding
(:mod:`.tunnel`), the lookup run on the other host (:mod:`.lookup`) and the resolver backend
that ties them together (:mod:`.host`).
"""
