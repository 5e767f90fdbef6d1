"""The image: framing and checksums (format.py), record kinds (records.py), sinks (sink.py)."""
