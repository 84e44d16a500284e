"""``python -m jupyter_crush``: see :mod:`jupyter_crush.cli`."""

from .cli import main

raise SystemExit(main())
