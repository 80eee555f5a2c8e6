//! The ImageBuild controller: schedules attempts onto ready builders as NodeBuilds, retries,
//! cancels and expires them, and aggregates their results into the ImageBuild's status.

mod aggregate;
mod apply;
mod deletion;
mod dispatch;
pub mod grants;
pub mod index;
mod judge;
pub mod memory;
pub mod naming;
pub mod pacing;
pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod policy;
pub mod reconcile;
pub mod removal;
pub mod schedule;
