"""Fault tests (issue #4): a served sidecar under steady Check load while its store fails."""
