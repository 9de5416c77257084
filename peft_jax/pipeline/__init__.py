"""The experiment pipeline: resumable stages, results tables and plots."""
