"""Live migration (issue 13): a process checkpointed into a stream (cryo.image.stream)
that a peer restarts as it arrives, with pre-copy rounds while it runs; the same rounds
make a local checkpoint that barely stops it.  docs/design.md, "Migration".

- ``auth``: the shared secret, the challenge-response and the session keys;
- ``precopy``: write tracking armed, pages copied in rounds while the process runs, and
  the final checkpoint's tracking (only the pages written since);
- ``sender``: ``migrate()``; ``receiver``: ``serve()`` and ``receive()``;
- ``local``: ``checkpoint()`` with pre-copy into a directory image;
- ``address``: ``--move-address``, the process's IPv4 address moved with it.
"""

from cryo.migrate.auth import AuthFailed
from cryo.migrate.local import checkpoint_pre_copy
from cryo.migrate.receiver import receive, serve
from cryo.migrate.sender import MigrateResult, migrate

__all__ = ["AuthFailed", "MigrateResult", "checkpoint_pre_copy", "migrate", "receive", "serve"]
