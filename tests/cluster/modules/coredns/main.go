// CoreDNS for the test cluster: the upstream server (coremain) with a short plugin list.
// There is no forward plugin on purpose: names outside cluster.local get no answer, so no
// query ever leaves the machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func init() {
	// The order of plugin.cfg upstream, restricted to the plugins imported above.
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "cache", "kubernetes", "whoami",
	}
}

func main() {
	coremain.Run()
}
