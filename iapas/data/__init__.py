"""Datasets: synthetic anomaly data and loaders for the public benchmark layouts."""
