//go:build !websocket

package main

// Built without gorilla/websocket (no `-tags websocket`): the ws-* modes are unavailable.

func wsAgent(proxyURL, name, token, kubernetesTarget, kubesphereTarget string) {
	fail("ws-agent: go_tower was built without -tags websocket")
}

func wsProxy(name, token string) {
	fail("ws-proxy: go_tower was built without -tags websocket")
}
