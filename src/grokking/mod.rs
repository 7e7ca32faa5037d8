//! Structural grokking (Murty, Sharma, Andreas, Manning, ACL 2023): the Dyck, question-formation
//! and tense-inflection data with their splits and metrics, tree projections (Murty et al., ICLR
//! 2023), and the experiment configs. Model training comes with the transformer toolkit.

pub mod cli;
pub mod config;
pub mod dyck;
pub mod grammar;
pub mod tree;
pub mod tree_projection;
