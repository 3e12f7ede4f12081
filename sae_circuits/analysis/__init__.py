"""The dictionary-learning paper's analyses as tools: feature families across widths, universality
across models, features against neurons, offline interpretability scores and feature monitors."""
