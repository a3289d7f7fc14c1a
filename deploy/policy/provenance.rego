# The SLSA v1 provenance of a release image, checked independently of
# `cargo xtask verify`:
#
#   cosign verify-attestation --type slsaprovenance1 \
#     --policy deploy/policy/provenance.rego ... IMAGE@DIGEST
#
# cosign gives each verified in-toto statement as `input` and accepts it
# when `allow` holds. The fixed parts are asserted exactly: the source
# repository (Cargo.toml's `repository`) and the builder, the release
# workflow on the tag of exactly the release being verified: set
# `version` to it. A provenance of another release, even of this
# repository, is refused. The subject digest and the source revision are
# asserted by shape; cosign itself checks that the statement's subject is
# the digest verified.
package signature

import rego.v1

repository := "https://github.com/example-org/rust-release"

# The release this policy accepts, exactly as its git tag.
version := "v1.2.3"

builder := concat("", [repository, "/.github/workflows/release.yml@refs/tags/", version])

default allow := false

allow if {
	input.predicateType == "https://slsa.dev/provenance/v1"
	count(input.subject) > 0
	every subject in input.subject {
		regex.match(`^[0-9a-f]{64}$`, subject.digest.sha256)
	}
	definition := input.predicate.buildDefinition
	definition.buildType == concat("", [repository, "/blob/main/docs/sbom-and-provenance.md#build-type-v1"])
	definition.externalParameters.source.repository == repository
	revision := definition.externalParameters.source.revision
	regex.match(`^[0-9a-f]{40}$`, revision)
	some source in definition.resolvedDependencies
	startswith(source.uri, concat("", ["git+", repository]))
	source.digest.gitCommit == revision
	input.predicate.runDetails.builder.id == builder
}
