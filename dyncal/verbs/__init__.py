"""The library side of the verbs that run models or write runs: collect, profile, verify, export, demo."""
