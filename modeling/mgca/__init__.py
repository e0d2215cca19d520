"""MGCA (paper 004): multi-granularity cross-modal alignment of chest X-rays and reports."""
