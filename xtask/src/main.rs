//! `cargo xtask`: takes the server from source to a signed, attested,
//! multi-arch image. This file only parses flags and dispatches; each task
//! lives in its own module with one `run` entry.

// Library functions land before the tasks that call them; this goes once
// every task is wired up.
#![allow(dead_code)]

mod archive;
mod attest;
mod bench;
mod buildx;
mod bundle;
mod config;
mod cosign;
mod dist;
mod flags;
mod git;
mod image;
mod oci;
mod pin_base;
mod preflight;
mod progress;
mod provenance;
mod publish;
mod push;
mod registry;
mod release;
mod sbom;
mod setup;
mod sign;
mod source;
mod subtask;
mod tags;
mod test;
mod tools;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use flags::Command;

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    let result = match &flags.command {
        Command::Setup(flags) => setup::run(flags),
        Command::Test(flags) => test::run(flags),
        Command::Tags(flags) => tags::run(flags),
        Command::Dist(flags) => dist::run(flags),
        Command::Image(flags) => image::run(flags),
        Command::Sbom(flags) => sbom::run(flags),
        Command::Sign(flags) => sign::run(flags),
        Command::Attest(flags) => attest::run(flags),
        Command::Verify(flags) => verify::run(flags),
        Command::Release(flags) => release::run(flags),
        Command::Bundle(flags) => bundle::run(flags),
        Command::Bench(flags) => bench::run(flags),
        Command::PinBase(flags) => pin_base::run(flags),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its context, outermost first.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
