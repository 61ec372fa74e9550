"""Batch and asynchronous predictions (jobs): issue 23."""
