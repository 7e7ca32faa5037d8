//! Unlabelled binary trees over the words `0..n` of a sentence: the gold parses of the grammar
//! tasks, the projected trees of [`super::tree_projection`], and the baselines they are compared
//! with (right-branching, uniformly random splits).
//!
//! A tree's brackets are the inclusive word spans `(i, j)` of its internal nodes, the root
//! `(0, n - 1)` included and single words excluded; this is the span set the official tparseval
//! code counts (`get_brackets` in `tree_projections/eval_helpers.py`).
//!
//! ```
//! use attnlab::grokking::tree::BinaryTree;
//! // ((0 1) 2)
//! let t = BinaryTree::node(BinaryTree::node(BinaryTree::Leaf(0), BinaryTree::Leaf(1)), BinaryTree::Leaf(2));
//! assert_eq!(t.brackets(), vec![(0, 1), (0, 2)]);
//! assert_eq!(BinaryTree::right_branching(3).brackets(), vec![(1, 2), (0, 2)]);
//! ```

use rand::Rng;
use serde::Serialize;
use std::collections::BTreeSet;

/// A binary tree whose leaves are word indices, left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinaryTree {
    /// One word, by its index in the sentence.
    Leaf(usize),
    /// An internal node: left and right constituent.
    Node(Box<BinaryTree>, Box<BinaryTree>),
}

impl BinaryTree {
    /// An internal node over `left` then `right`.
    pub fn node(left: BinaryTree, right: BinaryTree) -> Self {
        BinaryTree::Node(Box::new(left), Box::new(right))
    }

    /// The right-branching tree `(0 (1 (2 ... (n-2 n-1))))`, the baseline of tparseval.
    /// Panics if `n == 0`.
    pub fn right_branching(n: usize) -> Self {
        assert!(n > 0, "a tree needs at least one word");
        Self::right_branching_from(0, n - 1)
    }

    fn right_branching_from(first: usize, last: usize) -> Self {
        if first == last {
            BinaryTree::Leaf(first)
        } else {
            Self::node(
                BinaryTree::Leaf(first),
                Self::right_branching_from(first + 1, last),
            )
        }
    }

    /// A random tree over words `first..=last`: each span splits at a point drawn uniformly from
    /// its `len - 1` split points (the code's `random_parse`).
    pub fn random_splits<R: Rng>(first: usize, last: usize, rng: &mut R) -> Self {
        if first == last {
            BinaryTree::Leaf(first)
        } else {
            let k = rng.gen_range(first..last);
            Self::node(
                Self::random_splits(first, k, rng),
                Self::random_splits(k + 1, last, rng),
            )
        }
    }

    /// The inclusive word span `(first, last)` this tree covers.
    pub fn span(&self) -> (usize, usize) {
        match self {
            BinaryTree::Leaf(i) => (*i, *i),
            BinaryTree::Node(l, r) => (l.span().0, r.span().1),
        }
    }

    /// The leaves, left to right.
    pub fn leaves(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.visit(&mut |t| {
            if let BinaryTree::Leaf(i) = t {
                out.push(*i);
            }
        });
        out
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        let (a, b) = self.span();
        b - a + 1
    }

    /// Always false: a tree has at least one leaf.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the leaves are exactly `0..n`, in order (so the tree spans an `n`-word sentence).
    pub fn spans_sentence(&self, n: usize) -> bool {
        self.leaves() == (0..n).collect::<Vec<_>>()
    }

    /// The brackets: spans of internal nodes (root included, words excluded), in post-order.
    pub fn brackets(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        self.visit(&mut |t| {
            if let BinaryTree::Node(..) = t {
                out.push(t.span());
            }
        });
        out
    }

    /// The brackets as a set.
    pub fn bracket_set(&self) -> BTreeSet<(usize, usize)> {
        self.brackets().into_iter().collect()
    }

    /// Every node's span, leaves included, in post-order (children before parents).
    pub fn all_spans(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        self.visit(&mut |t| out.push(t.span()));
        out
    }

    /// Post-order traversal.
    fn visit<F: FnMut(&BinaryTree)>(&self, f: &mut F) {
        if let BinaryTree::Node(l, r) = self {
            l.visit(f);
            r.visit(f);
        }
        f(self);
    }

    /// Nested JSON: a leaf is its word index, a node is `[left, right]`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            BinaryTree::Leaf(i) => serde_json::Value::from(*i),
            BinaryTree::Node(l, r) => serde_json::Value::Array(vec![l.to_json(), r.to_json()]),
        }
    }

    /// Bracketed text with the given words, e.g. `((the newt) (does giggle))`.
    pub fn render(&self, words: &[&str]) -> String {
        match self {
            BinaryTree::Leaf(i) => words.get(*i).copied().unwrap_or("?").to_string(),
            BinaryTree::Node(l, r) => format!("({} {})", l.render(words), r.render(words)),
        }
    }
}

impl Serialize for BinaryTree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}
