// A registry with the OCI 1.1 referrers API, for the tests: the
// distribution registry 2.8 answers 404 to /v2/NAME/referrers/DIGEST, and
// `crane registry serve` leaves go-containerregistry's referrers support
// off. It keeps everything in memory and serves plain HTTP on the address
// given with -addr, which the tests pick on loopback.
//
// Its listing is not quite OCI 1.1: each referrer's artifactType is its
// config's media type (application/vnd.oci.empty.v1+json for cosign's
// bundles) and annotations are left out. It is kept as it is, because the
// xtask must read such a registry too (oci/referrers.rs reads the
// manifests then), and cosign 3 does.
package main

import (
	"flag"
	"log"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "", "listen address, such as 127.0.0.1:5000")
	flag.Parse()
	if *addr == "" {
		log.Fatal("referrers-registry: -addr is required")
	}
	logger := log.New(os.Stderr, "", log.LstdFlags)
	handler := registry.New(
		registry.Logger(logger),
		registry.WithReferrersSupport(true),
	)
	logger.Printf("serving on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, handler))
}
