"""hiors-jax: Hi-ORS post-training of PI0 policies in JAX/Flax."""
