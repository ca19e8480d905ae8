"""Checkpoint compression: the ``.safetensors.tzst`` codec, ``tritter-ckpt`` and the ``tritter-compress`` sink."""
