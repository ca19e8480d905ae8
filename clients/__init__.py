"""Thin clients of the tritter bus: tritterctl, the recorder, the monitor and the sinks."""
