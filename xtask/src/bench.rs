//! `cargo xtask bench`.

use anyhow::{bail, Result};

use crate::flags;

pub fn run(_flags: &flags::Bench) -> Result<()> {
    bail!("`cargo xtask bench` is not implemented yet")
}
