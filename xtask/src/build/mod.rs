//! Building the image: the base resolved once, the native assembler that
//! writes an OCI layout, and the `docker buildx` builder that must give the
//! same result.

pub mod assemble;
pub mod base;
pub mod binaries;
pub mod buildx;
pub mod fingerprint;
pub mod plan;
pub mod schedule;
pub mod toolchain;
