"""Applications built on the library: the CLI, corpus building, the demo and the paper reproduction."""
