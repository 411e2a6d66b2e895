"""The A (cross-modal alignment) and C (correspondence) scores of METHOD.md, over arrays and tensors."""
