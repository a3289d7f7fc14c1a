//! What is said about an image, and proven: cosign, the crate graph
//! compiled into each binary, the SBOMs and the SLSA provenance.

pub mod claims;
pub mod content;
pub mod cosign;
pub mod crate_graph;
pub mod identity;
pub mod provenance;
pub mod sbom;
pub mod session;
pub mod sigstore;
pub mod vuln;
