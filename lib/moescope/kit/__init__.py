"""The kit around the papers: the command line, the notebook runner and the report."""
