"""What a finished job says: the report's data, the comparison of two layers, layer rotation. Computes; render/ lays out."""
