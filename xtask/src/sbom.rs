//! `cargo xtask sbom`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Sbom) -> Result<()> {
    bail!("`cargo xtask sbom` is not implemented yet")
}
