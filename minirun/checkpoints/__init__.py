"""Getting weights and tokenizers onto the decoder: safetensors loading, GGUF conversion, hub pulls,
`tokenizer.json` with its chat template, and random-weight checkpoints of known shapes."""
