"""The kernel checkpointer, in user space: one module per resource kind, each with a
dump half and a restore half; dump.py and restore.py are the only ones that know the order."""
