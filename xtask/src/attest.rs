//! `cargo xtask attest`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Attest) -> Result<()> {
    bail!("`cargo xtask attest` is not implemented yet")
}
