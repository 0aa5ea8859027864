"""Denoising-EBM in pure PyTorch (never imports the web or queue stacks)."""
