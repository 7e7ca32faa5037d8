//! Structural grokking (Murty, Sharma, Andreas, Manning, ACL 2023).

pub mod cli;
