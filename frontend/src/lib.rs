//! rbuild-frontend: Dockerfile AST and build options to a build graph.
//!
//! For now only the `.dockerignore` matcher lives here.

pub mod dockerignore;
