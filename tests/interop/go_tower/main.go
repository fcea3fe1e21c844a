// Command go_tower emulates the original Go tower's SSH ends (golang.org/x/crypto/ssh) for
// interop tests of the TypeScript rewrite: identification lines SSH-kubesphere-v1-server /
// SSH-kubesphere-v1-client, the `config` and `ping` global requests, and `kubesphere`
// channels whose extra data is the raw "host:port".
//
//	go_tower proxy          listen on 127.0.0.1:0, print "LISTEN <port>", serve one agent
//	go_tower agent <port>   connect to 127.0.0.1:<port> as an agent, serve channels
//	go_tower ws-agent <proxyURL> <name> <token> <kubernetesTarget> <kubesphereTarget>
//	                        the original agent: SSH inside a kubesphere-v1 WebSocket
//	go_tower ws-proxy <name> <token>
//	                        the original proxy: SSH inside a kubesphere-v1 WebSocket
//
// The ws-* modes are in ws.go. Progress lines go to stdout ("KEY value..."), for the Deno test
// to check. GO_TOWER_TIMEOUT (a Go duration, default 30s) is the safety net after which the
// program exits with an error.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	serverVersion = "SSH-kubesphere-v1-server"
	clientVersion = "SSH-kubesphere-v1-client"
	allowedTarget = "10.96.0.1:443"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: go_tower proxy | go_tower agent <port>")
	}
	// Safety net: never outlive a stuck test.
	limit := 30 * time.Second
	if v := os.Getenv("GO_TOWER_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail("GO_TOWER_TIMEOUT: " + err.Error())
		}
		limit = d
	}
	time.AfterFunc(limit, func() { fail("timeout") })
	switch os.Args[1] {
	case "proxy":
		proxy()
	case "agent":
		if len(os.Args) < 3 {
			fail("agent needs a port")
		}
		agent(os.Args[2])
	case "ws-agent":
		if len(os.Args) != 7 {
			fail("usage: go_tower ws-agent <proxyURL> <name> <token> <kubernetesTarget> <kubesphereTarget>")
		}
		wsAgent(os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6])
	case "ws-proxy":
		if len(os.Args) != 4 {
			fail("usage: go_tower ws-proxy <name> <token>")
		}
		wsProxy(os.Args[2], os.Args[3])
	default:
		fail("unknown mode " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Println("ERROR", msg)
	os.Exit(1)
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// pattern is the deterministic payload both sides can check: byte i is i*7 mod 251.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}

// proxy behaves like the original tower proxy: any password, a fresh ECDSA P-256 host key,
// the config request answered, then `kubesphere` channels opened towards the agent.
func proxy() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail(err.Error())
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		fail(err.Error())
	}
	config := &ssh.ServerConfig{
		PasswordCallback: func(c ssh.ConnMetadata, pass []byte) (*ssh.Permissions, error) {
			fmt.Printf("AUTH user=%q\n", c.User())
			return nil, nil
		},
		ServerVersion: serverVersion,
	}
	config.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	fmt.Println("LISTEN", ln.Addr().(*net.TCPAddr).Port)
	c, err := ln.Accept()
	if err != nil {
		fail(err.Error())
	}
	ln.Close()
	sconn, chans, reqs, err := ssh.NewServerConn(c, config)
	if err != nil {
		fail("handshake: " + err.Error())
	}
	fmt.Println("CLIENT-VERSION", string(sconn.ClientVersion()))
	configured := make(chan struct{})
	go func() {
		for req := range reqs {
			switch req.Type {
			case "config":
				fmt.Println("CONFIG", string(req.Payload))
				req.Reply(true, nil)
				close(configured)
			default:
				fmt.Println("REQUEST", req.Type)
				req.Reply(true, nil)
			}
		}
	}()
	go func() {
		for ch := range chans {
			ch.Reject(ssh.Prohibited, "agents may not open channels")
		}
	}()
	select {
	case <-configured:
	case <-time.After(10 * time.Second):
		fail("no config request")
	}

	// A target the agent refuses.
	if _, _, err := sconn.OpenChannel("kubesphere", []byte("169.254.169.254:80")); err != nil {
		fmt.Println("REJECTED", strings.ReplaceAll(err.Error(), " ", "_"))
	} else {
		fail("forbidden target was accepted")
	}

	ch, chReqs, err := sconn.OpenChannel("kubesphere", []byte(allowedTarget))
	if err != nil {
		fail("open: " + err.Error())
	}
	go ssh.DiscardRequests(chReqs)
	payload := pattern(3<<20 + 17)
	go func() {
		if _, err := ch.Write(payload); err != nil {
			fail("write: " + err.Error())
		}
		ch.CloseWrite()
	}()
	got, err := io.ReadAll(ch)
	if err != nil {
		fail("read: " + err.Error())
	}
	fmt.Println("GOT", len(got), digest(got))
	ch.Close()
	sconn.Close()
	fmt.Println("DONE")
}

// agent behaves like the original tower agent: user "" password "", config request, then it
// serves `kubesphere` channels (this one refuses targets other than allowedTarget, so that the
// refusal path is exercised too) by echoing what it reads, prefixed, after the peer's EOF.
func agent(port string) {
	cfg := &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   clientVersion,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		fail(err.Error())
	}
	sshConn, chans, reqs, err := ssh.NewClientConn(c, "", cfg)
	if err != nil {
		fail("handshake: " + err.Error())
	}
	fmt.Println("SERVER-VERSION", string(sshConn.ServerVersion()))
	go ssh.DiscardRequests(reqs)
	ok, reply, err := sshConn.SendRequest("config", true, []byte(`{"Version":"v0.1.0","Name":"alpha","Token":"t0k3n"}`))
	if err != nil {
		fail("config: " + err.Error())
	}
	fmt.Printf("CONFIG %v %q\n", ok, string(reply))
	ok, _, err = sshConn.SendRequest("ping", true, nil)
	if err != nil {
		fail("ping: " + err.Error())
	}
	fmt.Println("PING", ok)
	for ch := range chans {
		if ch.ChannelType() != "kubesphere" {
			ch.Reject(ssh.UnknownChannelType, "unknown channel type")
			continue
		}
		remote := string(ch.ExtraData())
		fmt.Println("TARGET", remote)
		if remote != allowedTarget {
			ch.Reject(ssh.ConnectionFailed, "target not allowed")
			continue
		}
		stream, chReqs, err := ch.Accept()
		if err != nil {
			fail("accept: " + err.Error())
		}
		go ssh.DiscardRequests(chReqs)
		got, err := io.ReadAll(stream)
		if err != nil {
			fail("read: " + err.Error())
		}
		fmt.Println("GOT", len(got), digest(got))
		if _, err := stream.Write(append([]byte("echo:"), got...)); err != nil {
			fail("write: " + err.Error())
		}
		stream.CloseWrite()
		// Wait for the proxy to close the channel, then leave.
		io.Copy(io.Discard, stream)
		stream.Close()
		break
	}
	sshConn.Close()
	fmt.Println("DONE")
}
