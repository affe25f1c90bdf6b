"""The original README's example daemon, in Python 3.

Run it in the foreground with ``python examples/message_daemon.py``, or under the supervisor
with ``malacodactl start MessageDaemon`` (see ``conf/MessageDaemon.toml``).
"""

from threading import RLock

from malacoda import Malacoda


class MessageDaemon(Malacoda):
    """Collects messages and prints them from its main loop."""

    def __init__(self, daemonize=False, **kwargs):
        self.messages = []
        self.pst_counter = 0
        self.lock = RLock()
        super().__init__(daemonize=daemonize, pst_config={"class_name": "PstFileStorage"}, **kwargs)

    def _run(self):
        while self.running:
            with self.lock:
                if self.messages:
                    print(f"Found {len(self.messages)} new messages", flush=True)
                    for msg in self.messages:
                        print(msg, flush=True)
                    self.messages = []
            self._wait(5)

    def insert_message(self, msg):
        """Queue a message for the main loop; returns 'Message received!'."""
        with self.lock:
            self.messages.append(msg)
            self.pst_counter += 1
        return "Message received!"


if __name__ == "__main__":
    import sys

    MessageDaemon(daemonize="--daemonize" in sys.argv[1:])
