"""``tritter-tui``: a live terminal monitor for tritterd (prompt_toolkit), or offline over run folders."""
