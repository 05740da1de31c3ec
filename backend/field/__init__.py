"""The 4D neural field (issue 5): encoders first; fields, renderer and extraction follow."""
