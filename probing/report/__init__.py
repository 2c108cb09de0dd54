"""Tables and plots of liref's results (PNG via matplotlib's Agg backend)."""
