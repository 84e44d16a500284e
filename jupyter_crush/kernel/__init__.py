"""The kernel's side: ``Crush`` (its state), configuration, prompt preparation, submitting
a prompt, rerun of recorded turns, fix, context files, display, cell permissions, errors,
undo and its snapshots, ``%crush verify``'s background run, and the answer's code blocks and
edit review that reach the kernel from the run view."""
