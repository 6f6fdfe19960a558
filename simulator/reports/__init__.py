"""Offline interactive Plotly reports (report.html) for each command."""
