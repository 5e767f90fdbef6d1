"""System V IPC objects checkpointed on their own (issue 4; seeds 000, 001, 002).

Message queues, semaphore sets and shared memory segments are saved and loaded apart from
any process, with their own versions, in a repository laid out as seed 000's
(see :mod:`cryo.ipc.repo`).  Everything acts on the IPC namespace of the caller.
See docs/ipc.md.
"""

from cryo.ipc.common import Loaded, NoSuchObject, Perm
from cryo.ipc.kinds import Kind
from cryo.ipc.objects import Description, Saved, list_saved, live, load, save, show
from cryo.ipc.procfs import LiveObject
from cryo.ipc.repo import Entry, Store
from cryo.ipc.sets import SavedSet, SetInfo, load_all, parse_key, parse_owner, read_set, save_all

__all__ = [
    "Description",
    "Entry",
    "Kind",
    "LiveObject",
    "Loaded",
    "NoSuchObject",
    "Perm",
    "Saved",
    "SavedSet",
    "SetInfo",
    "Store",
    "list_saved",
    "live",
    "load",
    "load_all",
    "parse_key",
    "parse_owner",
    "read_set",
    "save",
    "save_all",
    "show",
]
