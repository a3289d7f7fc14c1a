//! Floating tags never move backwards: the policy that image and release
//! both hand to `oci::push::move_tags`, which asks it right before and
//! right after each floating tag moves. A release that planned its tags
//! before a newer one was published must neither move `latest` (or `vX`,
//! `vX.Y`) onto itself, nor leave it there if its write landed after the
//! newer release's.

use anyhow::Result;
use semver::Version;

use crate::oci::client::Client;
use crate::oci::push::{self, TagChange};
use crate::tags::{self, parse_version, Build};

/// Sets a release's tags as the policy says, from what `repo` holds now:
/// `vX.Y.Z` and `sha-…` (immutable: an error if they name another digest,
/// unless `force`), then the floating tags the release is the newest of,
/// each checked right before and after it moves. Returns the tags that
/// moved, and the floating tags not set, with why. Release and
/// `bundle --load` both tag through here.
pub fn tag_release(
    client: &Client,
    repo: &str,
    version: &Version,
    sha: &str,
    index: &[u8],
    index_digest: &str,
    force: bool,
) -> Result<(Vec<TagChange>, Vec<String>)> {
    let published = client.list_tags(repo)?;
    let build = Build::Release(version.clone());
    let plan = tags::compute(&build, sha, &published)?;
    let moved = push::move_tags(
        client,
        repo,
        &plan.with_immutability(),
        index,
        index_digest,
        force,
        &|tag, published| newer_release(&build, tag, published),
    )?;
    let mut not_set = plan.not_set;
    not_set.extend(moved.kept);
    Ok((moved.changes, not_set))
}

/// For a floating tag of `build`, given the tags the repository has now:
/// the newest published release that the tag must stay on, when it is
/// newer than the build's version. Branch and pull-request tags have no
/// order, so they never have one.
pub fn newer_release(build: &Build, tag: &str, published: &[String]) -> Option<String> {
    let Build::Release(version) = build else {
        return None;
    };
    let (major, minor) = range(tag)?;
    published
        .iter()
        .filter_map(|t| parse_version(t).ok().filter(|v| format!("v{v}") == *t))
        .filter(|v| v.pre.is_empty() && v > version)
        .filter(|v| major.is_none_or(|m| v.major == m) && minor.is_none_or(|m| v.minor == m))
        .max()
        .map(|v| format!("v{v}"))
}

/// Which versions a floating tag covers, as the major and minor it fixes:
/// `latest` all, `vX` the X.y.z and `vX.Y` the X.Y.z; None for any other
/// tag.
fn range(tag: &str) -> Option<(Option<u64>, Option<u64>)> {
    if tag == "latest" {
        return Some((None, None));
    }
    let numbers: Vec<u64> = tag
        .strip_prefix('v')?
        .split('.')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    match numbers[..] {
        [major] => Some((Some(major), None)),
        [major, minor] => Some((Some(major), Some(minor))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_floating_tag_stays_on_the_newest_release_in_its_range() {
        let build = Build::Release(parse_version("v1.2.0").unwrap());
        let published = tags(&[
            "v1.2.0",
            "v1.3.0",
            "v2.0.0-rc.1",
            "v1.2.1",
            "sha-abcdef0",
            "v0.9.0",
        ]);
        assert_eq!(
            newer_release(&build, "latest", &published).as_deref(),
            Some("v1.3.0")
        );
        assert_eq!(
            newer_release(&build, "v1", &published).as_deref(),
            Some("v1.3.0")
        );
        assert_eq!(
            newer_release(&build, "v1.2", &published).as_deref(),
            Some("v1.2.1")
        );
        assert_eq!(newer_release(&build, "v1.2.0", &published), None);
        let newest = Build::Release(parse_version("v1.3.0").unwrap());
        assert_eq!(newer_release(&newest, "latest", &published), None);
        let branch = Build::Branch {
            name: "main".into(),
            is_default: true,
        };
        assert_eq!(newer_release(&branch, "latest", &tags(&["v9.0.0"])), None);
    }
}
