//! Vertex ids: a vertex's place in one [`crate::BuildGraph`].

use std::fmt;

use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// A vertex in a [`crate::BuildGraph`]. Stable: pruning does not renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VertexId(pub u32);

impl VertexId {
    pub(crate) fn node(self) -> NodeIndex<u32> {
        NodeIndex::new(self.0 as usize)
    }
    pub(crate) fn from_node(n: NodeIndex<u32>) -> Self {
        Self(u32::try_from(n.index()).expect("graph index fits u32"))
    }
}

impl fmt::Display for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
