"""The notebook around the kernel: the JupyterLab comm, notebook state (cells, errors),
provenance of inserted cells, the kernel interrupt, and a notebook's run in a fresh kernel
(``%crush verify``: the run, its report, the names its cells define)."""
