//! `cargo xtask demo` (being written: see issue 4).
use anyhow::{Result, bail};

pub fn run() -> Result<()> {
    bail!("the demo is not written yet")
}
