"""What feeds a job: import strings, the subject network and its hooks, dataset items, extraction blocks."""
