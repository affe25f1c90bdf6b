"""One host's facts: folder layout and names (:mod:`.paths`), safe files (:mod:`.files`),
process liveness (:mod:`.process`), the name registry and locks (:mod:`.registry`), and the
command lines of the Python processes Malacoda starts (:mod:`.launch`).
"""
