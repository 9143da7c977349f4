"""Shared substrate: models, loaders, engine, backends, server, training and data utilities, report."""
