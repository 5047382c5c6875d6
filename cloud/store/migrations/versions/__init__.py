"""Migration scripts; revision ids are short and ordered ("0001", "0002_...")."""
