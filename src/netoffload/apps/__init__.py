"""Programs built on the stack: the setup they share, ``nc`` and ``ping``."""
