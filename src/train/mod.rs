//! Shared training machinery: optimisers, schedules, checkpoints (issue 5).
