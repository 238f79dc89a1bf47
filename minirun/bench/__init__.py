"""`minirun bench`: minirun's own timings and transformers' on the same checkpoint, in one process."""
