//! stencilcheck: proves copy-and-patch JIT stencils are patched correctly.
//!
//! The pipeline, one module per stage, each reading only what the stages
//! before it produced:
//!
//! load → place → patch → execute → judge → report

pub mod error;
pub mod model;
pub mod patch;
pub mod place;
