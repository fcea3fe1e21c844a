// Command go_tower is a rendition of the original KubeSphere tower (Go, v0.2.2) for the interop
// tests: its agent and its proxy as they behave on the wire, with their flags and defaults, written
// from the facts of the original's source (tests/interop/README.md lists each fact, where it comes
// from, and the test that covers it). It is test code, not a port: what the tests do not need (the
// Cluster controller, kubeconfig issuing, YAML kubeconfigs) is left out or replaced, as said below.
//
//	go_tower agent [flags]   the original agent (cmd/agent), same flags and defaults
//	go_tower proxy [flags]   the original proxy (cmd/proxy); the Cluster objects it would read from
//	                         the host cluster are given as --cluster NAME=TOKEN,KPORT,KSPORT
//	go_tower ssh-probe-server
//	go_tower ssh-probe-client <port>
//	                         probes of our SSH hooks against golang.org/x/crypto/ssh over plain TCP
//	                         with the original's SSH settings (probe.go); not the original
//
// Progress goes to stdout as lines "KEY value..." for the Deno tests to wait on. GO_TOWER_TIMEOUT
// (a Go duration, default 30s) is a safety net after which the program exits with an error.
package main

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// The original's protocol and build versions (pkg/version): BuildVersion is what a binary built
// without -ldflags, as the project's Dockerfile builds it, reports.
const (
	protocolVersion = "kubesphere-v1"
	buildVersion    = "0.0.0-rc"
	serverIdent     = "SSH-" + protocolVersion + "-server"
	clientIdent     = "SSH-" + protocolVersion + "-client"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: go_tower agent|proxy [flags] | ssh-probe-server | ssh-probe-client <port>")
	}
	limit := 30 * time.Second
	if v := os.Getenv("GO_TOWER_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail("GO_TOWER_TIMEOUT: " + err.Error())
		}
		limit = d
	}
	time.AfterFunc(limit, func() { fail("timeout") })
	args := os.Args[2:]
	switch os.Args[1] {
	case "agent":
		runAgent(args)
	case "proxy":
		runProxy(args)
	case "ssh-probe-server":
		probeServer()
	case "ssh-probe-client":
		if len(args) != 1 {
			fail("ssh-probe-client needs a port")
		}
		probeClient(args[0])
	default:
		fail("unknown mode " + os.Args[1])
	}
}

var sayMu sync.Mutex

// say prints one progress line: the key, then the values separated by spaces.
func say(key string, values ...interface{}) {
	sayMu.Lock()
	defer sayMu.Unlock()
	fmt.Println(append([]interface{}{key}, values...)...)
}

func fail(msg string) {
	say("ERROR", msg)
	os.Exit(1)
}
