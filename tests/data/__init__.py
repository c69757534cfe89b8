"""Tests of runtime/data (chat samples, templates, masks)."""
