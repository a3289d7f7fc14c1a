// helm-upgrade runs Helm's own install and upgrade code (the Go SDK, with
// in-memory release storage and a fake cluster) on two versions of a chart,
// and prints, as one JSON object, the image each resulting release runs:
// after an upgrade with --reset-then-reuse-values, and after one with
// --reuse-values. `helm template` cannot show this: the difference lies in
// which values Helm merges from the previous release.
//
//	helm-upgrade OLD_CHART_DIR NEW_CHART_DIR KEY=VALUE...
//
// The KEY=VALUE pairs are the operator's own values at install time, as
// `--set` gives them; the upgrade sets none, as the documented command.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader"
	kubefake "helm.sh/helm/v4/pkg/kube/fake"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage"
	"helm.sh/helm/v4/pkg/storage/driver"
	"helm.sh/helm/v4/pkg/strvals"
)

var imageLine = regexp.MustCompile(`(?m)^\s+image:\s*"?([^"\s]+)"?\s*$`)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: helm-upgrade OLD_CHART_DIR NEW_CHART_DIR [KEY=VALUE...]")
		os.Exit(2)
	}
	values := map[string]any{}
	for _, pair := range os.Args[3:] {
		if err := strvals.ParseInto(pair, values); err != nil {
			fail("cannot parse %s: %v", pair, err)
		}
	}
	out := map[string]any{}
	for _, mode := range []string{"reset-then-reuse-values", "reuse-values"} {
		installed, upgraded := installThenUpgrade(os.Args[1], os.Args[2], values, mode)
		out["installed"] = images(installed)
		out[mode] = images(upgraded)
		out[mode+"-config"] = upgraded.Config
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("cannot write JSON: %v", err)
	}
}

func installThenUpgrade(oldDir, newDir string, values map[string]any, mode string) (*release.Release, *release.Release) {
	cfg := &action.Configuration{
		Releases:     storage.Init(driver.NewMemory()),
		KubeClient:   &kubefake.PrintingKubeClient{Out: io.Discard},
		Capabilities: common.DefaultCapabilities,
	}
	oldChart, err := loader.Load(oldDir)
	if err != nil {
		fail("cannot load %s: %v", oldDir, err)
	}
	newChart, err := loader.Load(newDir)
	if err != nil {
		fail("cannot load %s: %v", newDir, err)
	}
	install := action.NewInstall(cfg)
	install.ReleaseName = "server"
	install.Namespace = "server"
	first, err := install.Run(oldChart, values)
	if err != nil {
		fail("install: %v", err)
	}
	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace = "server"
	switch mode {
	case "reset-then-reuse-values":
		upgrade.ResetThenReuseValues = true
	case "reuse-values":
		upgrade.ReuseValues = true
	}
	second, err := upgrade.Run("server", newChart, map[string]any{})
	if err != nil {
		fail("upgrade with --%s: %v", mode, err)
	}
	return first.(*release.Release), second.(*release.Release)
}

// The distinct `image:` values of a release's manifest.
func images(r *release.Release) []string {
	seen := map[string]bool{}
	var found []string
	for _, m := range imageLine.FindAllStringSubmatch(r.Manifest, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			found = append(found, m[1])
		}
	}
	return found
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "helm-upgrade: "+strings.TrimSuffix(format, "\n")+"\n", args...)
	os.Exit(1)
}
