"""`fopro-edge ablate`: the method ladder over seeds, its paired comparisons and report."""
