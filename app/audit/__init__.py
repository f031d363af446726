"""The auditors' side (issue 11): tenant-wide search and export of the ledger."""
