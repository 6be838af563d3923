"""One-step data: text layout, generation, tokenizer, streaming and the DataModule."""
