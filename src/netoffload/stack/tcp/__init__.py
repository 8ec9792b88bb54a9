"""TCP: the sans-I/O connection core, listeners, congestion control and loss recovery."""
