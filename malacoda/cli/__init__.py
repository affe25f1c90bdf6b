"""``malacodactl``: the click application (:mod:`.app`), its value and key arguments
(:mod:`.values`), what it runs on other hosts (:mod:`.hosts`), ``keys`` (:mod:`.keys`), and
how it prints what came from elsewhere (:mod:`.terminal`).
"""
