"""A daemon module beside the fixture's test: found through an inline ``path = ["."]``."""

from malacoda import Malacoda


class Beside(Malacoda):
    def _run(self):
        while self.running:
            self._wait(0.05)

    def where(self):
        return "beside the test file"
