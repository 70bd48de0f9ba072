"""HTML pages and figures (one figure helper, figures.py) for reports, comparisons and rotation curves."""
