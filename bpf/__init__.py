"""The XDP programs' C sources (package data: compiled by BCC at run time)."""
