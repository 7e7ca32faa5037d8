//! LEGO reasoning task (Zhang, Backurs, Bubeck, Eldan, Gunasekar, Wagner 2022).

pub mod cli;
