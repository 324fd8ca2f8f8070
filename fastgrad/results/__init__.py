"""Results: Report and AuditReport, their records, the tables and to_dict()."""
