"""Running a loaded decoder: the `Session` (cache, chunked prefill, one-token decode), row layouts and
the decode loop, sampling, and the `LLM` facade that ties a model to its tokenizer."""
