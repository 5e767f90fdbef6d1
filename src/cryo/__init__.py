"""cryo: checkpoint/restart of Linux processes in user space."""

from cryo.errors import (
    AccessDenied,
    CryoError,
    ImageCorrupt,
    ImageError,
    ImageExists,
    ImageIncompatible,
    ImageMissing,
    InternalError,
    NoSuchProcess,
    RestoreConflict,
    Unsupported,
)

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "CryoError",
    "ImageCorrupt",
    "ImageError",
    "ImageExists",
    "ImageIncompatible",
    "ImageMissing",
    "InternalError",
    "NoSuchProcess",
    "RestoreConflict",
    "Unsupported",
    "__version__",
]
