"""Trained models shipped with xdpnn (package data): the demo's default."""
