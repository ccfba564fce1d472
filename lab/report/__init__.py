"""What a run leaves behind, read and shown: its results in one typed form, the HTML report, and
two runs compared."""
