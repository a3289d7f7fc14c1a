//! The verification overlay of `bundle --load`, read as any other local
//! process could: it serves the trees it was given and nothing else of the
//! repository, and only under a name chosen at random for each run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use support::{run_ok, seed_base, tool, Registry};
use xtask::oci::client::Client;
use xtask::oci::overlay::Overlay;

fn digest_of(reference: &str) -> String {
    run_ok(Command::new(tool("crane")).args(["digest", "--insecure", reference]))
        .trim()
        .to_owned()
}

/// The status of GET `path` on the overlay (a blob's body is binary).
fn status(overlay: &Overlay, path: &str) -> u16 {
    let mut stream = TcpStream::connect(&overlay.host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        overlay.host
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_overlay_serves_only_the_given_trees_under_a_random_name() {
    let registry = Registry::start();
    let (_, layers) = seed_base(&registry, "app");
    let amd64 = digest_of(&format!("{}:amd64", registry.repo("app")));
    let arm64 = digest_of(&format!("{}:arm64", registry.repo("app")));
    let index = digest_of(&format!("{}:latest", registry.repo("app")));
    let start = || {
        let tags = BTreeMap::from([("v1".to_owned(), amd64.clone())]);
        Overlay::start(Client::new(&registry.host(), true).unwrap(), "app", tags).unwrap()
    };
    let overlay = start();
    let name = overlay.repository.clone();
    assert!(name.ends_with("/app"), "{name}");
    assert_eq!(name.len(), 32 + "/app".len(), "{name}");
    let served = [
        format!("/v2/{name}/manifests/v1"),
        format!("/v2/{name}/manifests/{amd64}"),
        format!("/v2/{name}/blobs/{}", layers["amd64"][0]),
    ];
    for path in &served {
        assert_eq!(status(&overlay, path), 200, "{path}");
    }
    let refused = [
        // Elsewhere in the repository: the other platform, the index.
        format!("/v2/{name}/manifests/{arm64}"),
        format!("/v2/{name}/manifests/{index}"),
        format!("/v2/{name}/manifests/latest"),
        format!("/v2/{name}/blobs/{}", layers["arm64"][0]),
        // What was given, under a name other than the overlay's.
        format!("/v2/app/manifests/{amd64}"),
        format!("/v2/other/app/blobs/{}", layers["amd64"][0]),
    ];
    for path in &refused {
        assert_eq!(status(&overlay, path), 404, "{path}");
    }
    assert_ne!(start().repository, name, "the name is not random per run");
}
