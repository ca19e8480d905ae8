"""tritter.formats: the on-disk formats that the daemon and the clients both read or write.

``checkpoints`` (checkpoint file names and listing), ``codec`` (the ``.safetensors.tzst``
compressed checkpoint; its container ``tzst_v2``, frames ``tzst_frames``, safetensors layout
``safetensors_index``), ``export_layout`` (a stage's Hugging Face folder), ``files`` (atomic
writes, file digests, sink cursor files).  Depends on ``tritter.protocol`` at most, never on
the daemon or the clients.
"""
