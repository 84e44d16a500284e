"""The kernel's side: ``Crush`` (its state), configuration, prompt preparation, submitting
a prompt, rerun of recorded turns, fix, context files, display, cell permissions, errors."""
