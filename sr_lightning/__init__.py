"""sr-lightning: a language model that proposes the next expression of a symbolic-regression search."""
