//! Transformer toolkit on candle (issue 5): blocks, stacks, attention capture, FLOP counting.

pub mod bench;
