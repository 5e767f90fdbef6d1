"""The three kinds of System V IPC objects, and their names on disk and on the command line."""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    MSG = "msg"
    SEM = "sem"
    SHM = "shm"

    @property
    def dirname(self) -> str:
        """The repository directory and file prefix (seed 000: ``msgq``, ``sem``, ``shm``)."""
        return "msgq" if self is Kind.MSG else self.value

    @property
    def noun(self) -> str:
        return {Kind.MSG: "message queue", Kind.SEM: "semaphore set", Kind.SHM: "segment"}[self]

    @classmethod
    def parse(cls, text: str) -> Kind:
        t = text.lower()
        if t in ("msg", "msgq", "queue"):
            return cls.MSG
        if t in ("sem", "semaphore"):
            return cls.SEM
        if t in ("shm", "segment"):
            return cls.SHM
        raise ValueError(f"unknown IPC kind {text!r} (msg, sem or shm)")
