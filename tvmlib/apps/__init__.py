"""Applications of the library: command-line tools (train, evaluate, experiment, latents,
classifier), benchmarks, the checkpoint makers, student copies of the notebooks and the README's
tables. They import the library; nothing in the library imports them."""
