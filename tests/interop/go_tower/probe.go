package main

// Probes of our SSH hooks (lib/tunnel/ssh_ident.ts, channel_open.ts, channel_accept.ts) against golang.org/x/crypto/ssh over plain
// TCP, for tests/interop/go_tower_test.ts. They use the original's SSH settings, but their
// requests and channel handling are fixtures of those tests, not the original's behaviour (the
// agent and proxy modes are).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

const allowedTarget = "10.96.0.1:443"

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

// probeServer is an x/crypto/ssh server with the original proxy's SSH settings (ident, any
// password, a fresh ECDSA P-256 host key): it answers every request, then opens `kubesphere`
// channels to the client — one to a target it expects refused, one it writes 3 MiB into and
// half-closes, reading back what comes.
func probeServer() {
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
			say("AUTH", fmt.Sprintf("user=%q", c.User()))
			return nil, nil
		},
		ServerVersion: serverIdent,
	}
	config.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	say("LISTEN", ln.Addr().(*net.TCPAddr).Port)
	c, err := ln.Accept()
	if err != nil {
		fail(err.Error())
	}
	ln.Close()
	sconn, chans, reqs, err := ssh.NewServerConn(c, config)
	if err != nil {
		fail("handshake: " + err.Error())
	}
	say("CLIENT-VERSION", string(sconn.ClientVersion()))
	configured := make(chan struct{})
	go func() {
		for req := range reqs {
			switch req.Type {
			case "config":
				say("CONFIG", string(req.Payload))
				req.Reply(true, nil)
				close(configured)
			default:
				say("REQUEST", req.Type)
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
		say("REJECTED", strings.ReplaceAll(err.Error(), " ", "_"))
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
	say("GOT", len(got), digest(got))
	ch.Close()
	sconn.Close()
	say("DONE")
}

// probeClient is an x/crypto/ssh client with the original agent's SSH settings (ident, user ""
// password "", no host key check): config and ping requests, then it serves `kubesphere` channels
// by refusing targets other than allowedTarget (the original never refuses: this probes how our
// side sees a refusal) and echoing what it reads, prefixed, after the peer's EOF.
func probeClient(port string) {
	cfg := &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   clientIdent,
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
	say("SERVER-VERSION", string(sshConn.ServerVersion()))
	go ssh.DiscardRequests(reqs)
	ok, reply, err := sshConn.SendRequest("config", true, []byte(`{"Version":"v0.1.0","Name":"alpha","Token":"t0k3n"}`))
	if err != nil {
		fail("config: " + err.Error())
	}
	say("CONFIG", ok, fmt.Sprintf("%q", string(reply)))
	ok, _, err = sshConn.SendRequest("ping", true, nil)
	if err != nil {
		fail("ping: " + err.Error())
	}
	say("PING", ok)
	for ch := range chans {
		if ch.ChannelType() != "kubesphere" {
			ch.Reject(ssh.UnknownChannelType, "unknown channel type")
			continue
		}
		remote := string(ch.ExtraData())
		say("TARGET", remote)
		if remote != allowedTarget {
			ch.Reject(ssh.ConnectionFailed, "target not allowed")
			continue
		}
		stream, chReqs, err := ch.Accept()
		if err != nil {
			fail("accept: " + err.Error())
		}
		// The requests channel closes when the channel is closed on both sides.
		closedBoth := make(chan struct{})
		go func() {
			ssh.DiscardRequests(chReqs)
			close(closedBoth)
		}()
		got, err := io.ReadAll(stream)
		if err != nil {
			fail("read: " + err.Error())
		}
		say("GOT", len(got), digest(got))
		if _, err := stream.Write(append([]byte("echo:"), got...)); err != nil {
			fail("write: " + err.Error())
		}
		stream.CloseWrite()
		// Wait for the proxy's CLOSE, which it sends once it has read our EOF, before closing the
		// connection: x/crypto/ssh queues what is written during a key exchange, and closing the
		// connection at our EOF would drop what is still queued (our reads already ended at the
		// proxy's EOF, so they cannot tell).
		stream.Close()
		<-closedBoth
		break
	}
	sshConn.Close()
	say("DONE")
}
