"""A staged pretrain-then-fine-tune pipeline for small Llama-style language models."""
