//! The OCI image format and the distribution API: documents, the layout on
//! disk, references, the registry client and its authentication, pushing,
//! and resolving a published image into the subject of a signature.

pub mod auth;
pub mod client;
mod layout;
pub mod overlay;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod run;
pub mod subject;
mod types;
pub mod unpack;

pub use layout::Layout;
pub use types::*;
