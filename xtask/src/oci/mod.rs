//! The OCI image format and the distribution API: documents, the layout on
//! disk, references, the registry client and its authentication, pushing,
//! and resolving a published image into the subject of a signature.

pub mod answer;
pub mod auth;
pub mod challenge;
pub mod client;
pub mod errors;
mod layout;
pub mod overlay;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod retry;
pub mod run;
pub mod subject;
pub mod token;
pub mod transport;
mod types;
pub mod unpack;

pub use layout::Layout;
pub use types::*;
