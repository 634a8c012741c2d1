"""Readers, tokenizer, masking, batching, graph walks and genome layouts (no model imports)."""
