//! Helpers for inferpick cross-process tests.
