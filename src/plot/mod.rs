//! Shared plotting helpers on plotters (issue 4).
