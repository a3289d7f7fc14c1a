//! The release tool behind `cargo xtask`: takes the server from source to a
//! signed, attested, multi-arch image. See ARCHITECTURE.md for the map.
//!
//! The tasks, one module each with one `run`, in pipeline order, use the
//! library folders below them; the library never uses a task.

pub mod flags;

// Tasks.
pub mod adopt;
pub mod attest;
pub mod audit;
pub mod bench;
pub mod bundle;
pub mod chart;
pub mod clean_cache;
pub mod conformance;
pub mod dist;
pub mod floating;
pub mod image;
pub mod pin_base;
pub mod release;
pub mod sbom;
pub mod setup;
pub mod sign;
pub mod tags;
pub mod test;
pub mod verify;

// Library.
pub mod build;
pub mod oci;
pub mod supply_chain;
pub mod support;
