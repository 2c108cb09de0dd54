"""Tables and plots of liref's results (PNG, each figure on its own Agg canvas)."""
