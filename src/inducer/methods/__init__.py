"""One module per parameter-efficient method: its config class and its layers."""
