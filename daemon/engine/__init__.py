"""Training engine: presets, Llama model, growth and checkpoints."""
