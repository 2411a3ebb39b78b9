"""The supplement's analysis tools: visualisations, cost table, ablation sweeps."""
