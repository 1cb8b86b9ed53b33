"""The offline tools: report, export, sample, dedup, dry-run estimate, evaluate."""
