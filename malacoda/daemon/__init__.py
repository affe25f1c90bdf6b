"""The daemon side: the :class:`~.base.Malacoda` base class, its ROUTER server (:mod:`.server`),
the table of operations (:mod:`.dispatch`), the cache of replies for re-sent requests
(:mod:`.replycache`) and the bounds on connections and memory (:mod:`.guard`).
"""
