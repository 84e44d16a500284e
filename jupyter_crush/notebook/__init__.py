"""The notebook around the kernel: the JupyterLab comm, notebook state (cells, errors),
provenance of inserted cells, and the kernel interrupt."""
