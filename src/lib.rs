//! stencilcheck: proves copy-and-patch JIT stencils are patched correctly.
//!
//! The pipeline, one module per stage, each reading only what the stages
//! before it produced:
//!
//! load → place → patch → execute → judge → report
//!
//! [`pipeline`] strings the stages together ([`explore`] steers extra runs
//! toward holes no placement executed); [`cli`] is the command line.

pub mod error;
pub mod model;
pub mod target;

pub mod execute;
pub mod explore;
pub mod judge;
pub mod load;
pub mod patch;
pub mod place;
pub mod report;

pub mod bench;
pub mod cli;
pub mod corpus;
pub mod diff;
pub mod diffpatch;
pub mod pipeline;
