"""Background training jobs: the job table, processes, the scheduler and the submit service."""
