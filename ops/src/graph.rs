//! The build graph: a DAG of [`Vertex`]es, built incrementally with dedup of
//! identical vertices.

use std::collections::{HashMap, HashSet};

use crate::cachekey::definition_digest;
use crate::id::VertexId;
use crate::op::{Description, Vertex};
use petgraph::Direction;
use petgraph::stable_graph::StableDiGraph;
use petgraph::visit::EdgeRef;

/// Errors building a graph.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("vertex {vertex:?} refers to unknown input {input}")]
    UnknownInput { vertex: String, input: VertexId },
    #[error("vertex {vertex:?} uses input index {index} but has only {count} inputs")]
    InputIndexOutOfRange {
        vertex: String,
        index: usize,
        count: usize,
    },
    #[error("unknown vertex {0}")]
    UnknownVertex(VertexId),
}

/// A DAG of vertices. Edges point from an input to the vertex that reads it,
/// weighted with the input's position.
#[derive(Clone, Debug, Default)]
pub struct BuildGraph {
    graph: StableDiGraph<Vertex, usize, u32>,
    /// Definition digest (op + input ids) → vertex, for dedup.
    by_definition: HashMap<[u8; 32], VertexId>,
}

impl BuildGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a vertex whose inputs are already in the graph. A vertex identical
    /// to one already present (same op, same inputs) is not added again: its
    /// id is returned. Then `ignore_cache` is or-ed into the existing vertex and
    /// the first description is kept.
    pub fn add(&mut self, vertex: Vertex) -> Result<VertexId, GraphError> {
        for input in &vertex.inputs {
            if !self.graph.contains_node(input.node()) {
                return Err(GraphError::UnknownInput {
                    vertex: vertex.description.name.clone(),
                    input: *input,
                });
            }
        }
        if let Some(max) = vertex.op.max_input_index() {
            if max >= vertex.inputs.len() {
                return Err(GraphError::InputIndexOutOfRange {
                    vertex: vertex.description.name.clone(),
                    index: max,
                    count: vertex.inputs.len(),
                });
            }
        }
        let digest = definition_digest(&vertex.op, &vertex.inputs);
        if let Some(&existing) = self.by_definition.get(&digest) {
            let v = &mut self.graph[existing.node()];
            v.ignore_cache |= vertex.ignore_cache;
            return Ok(existing);
        }
        let inputs = vertex.inputs.clone();
        let node = self.graph.add_node(vertex);
        for (pos, input) in inputs.iter().enumerate() {
            self.graph.add_edge(input.node(), node, pos);
        }
        let id = VertexId::from_node(node);
        self.by_definition.insert(digest, id);
        Ok(id)
    }

    /// The vertex with this id.
    pub fn get(&self, id: VertexId) -> Option<&Vertex> {
        self.graph.node_weight(id.node())
    }

    /// Mutable access, e.g. to set `ignore_cache` on a stage's vertices. The
    /// op and inputs must not be changed through it (dedup relies on them).
    pub fn description_mut(&mut self, id: VertexId) -> Option<&mut Description> {
        self.graph
            .node_weight_mut(id.node())
            .map(|v| &mut v.description)
    }

    /// Set `ignore_cache` on a vertex.
    pub fn set_ignore_cache(&mut self, id: VertexId, ignore: bool) -> Result<(), GraphError> {
        let v = self
            .graph
            .node_weight_mut(id.node())
            .ok_or(GraphError::UnknownVertex(id))?;
        v.ignore_cache = ignore;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// All vertex ids in a topological order (inputs before their readers).
    pub fn ids(&self) -> Vec<VertexId> {
        petgraph::algo::toposort(&self.graph, None)
            .expect("a build graph is acyclic by construction")
            .into_iter()
            .map(VertexId::from_node)
            .collect()
    }

    /// Vertices that read `id`, each once.
    pub fn dependents(&self, id: VertexId) -> Vec<VertexId> {
        let mut out: Vec<VertexId> = self
            .graph
            .edges_directed(id.node(), Direction::Outgoing)
            .map(|e| VertexId::from_node(e.target()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `targets` and everything they need, in topological order.
    pub fn required(&self, targets: &[VertexId]) -> Result<Vec<VertexId>, GraphError> {
        let mut seen: HashSet<VertexId> = HashSet::new();
        let mut stack: Vec<VertexId> = Vec::new();
        for &t in targets {
            if !self.graph.contains_node(t.node()) {
                return Err(GraphError::UnknownVertex(t));
            }
            stack.push(t);
        }
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            stack.extend(self.graph[id.node()].inputs.iter().copied());
        }
        Ok(self
            .ids()
            .into_iter()
            .filter(|id| seen.contains(id))
            .collect())
    }

    /// Remove every vertex the targets do not need. Returns how many were
    /// removed. Ids of the kept vertices do not change.
    pub fn prune(&mut self, targets: &[VertexId]) -> Result<usize, GraphError> {
        let keep: HashSet<VertexId> = self.required(targets)?.into_iter().collect();
        let remove: Vec<VertexId> = self
            .graph
            .node_indices()
            .map(VertexId::from_node)
            .filter(|id| !keep.contains(id))
            .collect();
        for id in &remove {
            self.graph.remove_node(id.node());
        }
        self.by_definition.retain(|_, id| keep.contains(id));
        Ok(remove.len())
    }

    /// The graph as JSON-serialisable data (for `--print-graph` and debugging).
    pub fn to_serializable(&self) -> Vec<(VertexId, &Vertex)> {
        self.ids()
            .into_iter()
            .map(|id| (id, &self.graph[id.node()]))
            .collect()
    }
}
