//! Placeholder of helper K's module list (commit 11a9483) until main has it.
pub mod controller;
pub mod queue;
pub mod registry;

pub use controller::{ControllerShared, NvmfContext};
